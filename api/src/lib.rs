//! septa's typed contract, shared by every process and free of the kernel toolchain (no aya,
//! no tokio): septa's own kinds (`FqdnPolicy`, `ThreatFeed`), the upstream
//! `ClusterNetworkPolicy` kind it reads (upstream installs that CRD), the agent socket protocol
//! and the flow record schema.
//!
//! Feature `kube` adds the Kubernetes custom resource derives (group `septa.dev`, version
//! `v1alpha1`, and `policy.networking.k8s.io/v1alpha2` for `ClusterNetworkPolicy`); `crdgen`
//! prints the CRDs of septa's own kinds, which the Helm chart installs.

#![forbid(unsafe_code)]

pub mod cluster_network_policy;
#[cfg(feature = "kube")]
pub mod crd;
pub mod flow;
pub mod fqdn_policy;
pub mod protocol;
pub mod status;
pub mod threat_feed;

/// The API group of septa's own kinds.
pub const GROUP: &str = "septa.dev";
/// The version of septa's own kinds.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of septa's own kinds.
pub const API_VERSION: &str = "septa.dev/v1alpha1";
