//! The desired state, a function of the inputs alone: the manifests, septa's own objects, the
//! registered endpoints and the node's addresses in; the map state, the FQDN rules per slot
//! and what flow records are enriched with out. Nothing here writes anywhere: the agent
//! applies the outputs (see [`crate::daemon::Agent::desired`]), so the same inputs always give
//! the same state, on any node and after any restart.

use std::{collections::BTreeMap, net::IpAddr};

use api::{flow::PolicyRef, protocol::Endpoint};
use dataplane::reconcile::MapState;
use dataplane_common::{endpoint_flags, identity, v4_mapped, EndpointInfo};
use ipnetwork::IpNetwork;
use policies::{
    compile::{Compiler, DesiredState},
    model::{Pod, WorkloadRef},
    Cluster,
};

use crate::{dns::engine::SlotRule, dns::spec::FqdnSpec, registry::Registry};

/// What the desired state is computed from.
pub struct Inputs<'a> {
    /// The last good manifests.
    pub manifests: &'a Cluster,
    /// The FqdnPolicies of those manifests.
    pub fqdn_specs: &'a [FqdnSpec],
    /// The resolvers FqdnPolicies without their own trust.
    pub dns_resolvers: &'a [IpAddr],
    /// The endpoints registered on this node.
    pub registry: &'a Registry,
    /// This node's own addresses (identity `host`).
    pub host_addresses: &'a [IpAddr],
    /// The manifests are the cluster's API objects: every pod with addresses that is not an
    /// endpoint here is a peer with its identity, and registered pods take their labels and
    /// owner from their Pod object alone.
    pub api_pods: bool,
}

/// An address's pod, for flow records: (namespace, pod, workload `Kind/name`, labels).
pub type EndpointRef = (String, String, String, BTreeMap<String, String>);

/// Everything the inputs imply.
pub struct Desired {
    /// What the maps should hold.
    pub maps: MapState,
    /// The FQDN rules of each endpoint slot, for the DNS engine.
    pub fqdn_rules: BTreeMap<u32, Vec<SlotRule>>,
    /// Rule ids to the policy rule they stand for (flow records' `policy`).
    pub rules: BTreeMap<u32, PolicyRef>,
    /// Endpoint addresses to their pods (flow records' peers).
    pub endpoints: BTreeMap<IpAddr, EndpointRef>,
    /// Service addresses to their Services (flow records' peers).
    pub services: BTreeMap<IpAddr, (String, String)>,
}

/// The desired state of `inputs`. `number` gives the compiled state its stable identity and
/// rule numbers before anything is derived from it.
pub fn desired(
    inputs: &Inputs,
    compiler: &mut Compiler,
    number: impl FnOnce(&mut DesiredState),
) -> Desired {
    let m = inputs.manifests;
    let mut cluster = Cluster {
        namespaces: m.namespaces.clone(),
        pods: Vec::new(),
        services: m.services.clone(),
        policies: m.policies.clone(),
        custom: Vec::new(),
        ..Default::default()
    };
    cluster.policies.extend(crate::fqdn::isolation_policies(
        inputs.fqdn_specs,
        inputs.dns_resolvers,
    ));
    let mut slot_pods = Vec::new();
    for r in inputs.registry.endpoints.values() {
        let pod = match inputs.api_pods {
            true => api_pod_for(&r.endpoint, m),
            false => pod_for(&r.endpoint, m),
        };
        slot_pods.push((r.slot, pod.clone()));
        cluster.pods.push(pod);
    }
    if inputs.api_pods {
        cluster.pods.extend(peers(m, inputs.registry));
    }
    let fqdn_rules = crate::fqdn::slot_rules(
        inputs.fqdn_specs,
        inputs.dns_resolvers,
        slot_pods.iter().map(|(s, p)| (*s, p)),
    );
    let mut st = compiler.compile(&cluster);
    number(&mut st);
    let rules = rule_refs(&st, inputs.fqdn_specs);
    let endpoints = endpoint_refs(&cluster.pods);
    let services = std::mem::take(&mut st.services);
    let maps = map_state(st, inputs, &fqdn_rules);
    Desired {
        maps,
        fqdn_rules,
        rules,
        endpoints,
        services,
    }
}

/// Rule ids to the rules they stand for: the compiled policies', then the FqdnPolicies'.
fn rule_refs(st: &DesiredState, fqdn_specs: &[FqdnSpec]) -> BTreeMap<u32, PolicyRef> {
    let mut rules: BTreeMap<u32, PolicyRef> = st
        .rules
        .iter()
        .map(|(id, r)| {
            (
                *id,
                PolicyRef {
                    namespace: r.namespace.clone(),
                    name: r.name.clone(),
                    direction: r.direction.to_string(),
                    rule_index: r.index,
                },
            )
        })
        .collect();
    for (id, s, i) in crate::fqdn::numbered(fqdn_specs) {
        rules.insert(
            id,
            PolicyRef {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                direction: "egress".into(),
                rule_index: i,
            },
        );
    }
    rules
}

/// Each address of a registered pod to that pod.
fn endpoint_refs(pods: &[Pod]) -> BTreeMap<IpAddr, EndpointRef> {
    let mut out = BTreeMap::new();
    for p in pods {
        for ip in &p.ips {
            out.insert(
                *ip,
                (
                    p.namespace.clone(),
                    p.name.clone(),
                    format!("{}/{}", p.workload.kind, p.workload.name),
                    p.labels.clone(),
                ),
            );
        }
    }
    out
}

/// The compiled policy and ipcache, the node's addresses as `host`, and one endpoint entry
/// per registered slot (its addresses, and the FQDN flag when it has FQDN rules).
fn map_state(
    st: DesiredState,
    inputs: &Inputs,
    fqdn_rules: &BTreeMap<u32, Vec<SlotRule>>,
) -> MapState {
    let mut ms = MapState {
        policy: st.policy,
        ipcache: st.ipcache,
        endpoints: BTreeMap::new(),
    };
    for ip in inputs.host_addresses {
        ms.ipcache.insert(IpNetwork::from(*ip), identity::HOST);
    }
    for r in inputs.registry.endpoints.values() {
        let key = format!("{}/{}", r.endpoint.namespace, r.endpoint.name);
        let Some(es) = st.endpoints.get(&key) else {
            continue;
        };
        let mut info: EndpointInfo = es.to_info();
        info.endpoint_id = r.endpoint_id;
        for ip in &r.endpoint.ips {
            match ip {
                IpAddr::V4(v4) => {
                    info.ipv4 = v4_mapped(v4.octets());
                    info.flags |= endpoint_flags::HAS_IPV4;
                }
                IpAddr::V6(v6) => {
                    info.ipv6 = v6.octets();
                    info.flags |= endpoint_flags::HAS_IPV6;
                }
            }
        }
        if fqdn_rules.contains_key(&r.slot) {
            info.flags |= endpoint_flags::FQDN;
        }
        ms.endpoints.insert(r.slot, info);
    }
    ms
}

/// Kubernetes mode: the pod an endpoint stands for is its Pod object (labels, owner, named
/// ports), with the addresses this node gave it. A registration whose pod left the API while it
/// still runs (a forced deletion) keeps the labels its object last had (kept with the
/// registration), so the policies that selected it still do.
pub fn api_pod_for(ep: &Endpoint, m: &Cluster) -> Pod {
    let mut pod = m
        .pods
        .iter()
        .find(|p| p.namespace == ep.namespace && p.name == ep.name)
        .cloned()
        .unwrap_or_else(|| Pod {
            namespace: ep.namespace.clone(),
            name: ep.name.clone(),
            workload: WorkloadRef {
                namespace: ep.namespace.clone(),
                name: ep.name.clone(),
                kind: "Pod".into(),
            },
            labels: ep.labels.clone().unwrap_or_default(),
            named_ports: Default::default(),
            ips: Vec::new(),
            host_network: false,
        });
    pod.ips = ep.ips.clone();
    pod
}

/// Kubernetes mode: the cluster's other pods, as peers: every pod with addresses that is not
/// registered here. This node's registrations own their addresses (the node's own IPAM gave
/// them), whatever the API still says of an older pod.
fn peers<'a>(m: &'a Cluster, registry: &'a Registry) -> impl Iterator<Item = Pod> + 'a {
    let local: std::collections::HashSet<(&str, &str)> = registry
        .endpoints
        .values()
        .map(|r| (r.endpoint.namespace.as_str(), r.endpoint.name.as_str()))
        .collect();
    let local_ips: std::collections::HashSet<IpAddr> = registry
        .endpoints
        .values()
        .flat_map(|r| r.endpoint.ips.iter().copied())
        .collect();
    m.pods
        .iter()
        .filter(move |p| {
            !p.host_network
                && !p.ips.is_empty()
                && !local.contains(&(p.namespace.as_str(), p.name.as_str()))
        })
        .filter_map(move |p| {
            let mut p = p.clone();
            p.ips.retain(|ip| !local_ips.contains(ip));
            (!p.ips.is_empty()).then_some(p)
        })
}

/// The pod an endpoint stands for: its Pod object in the manifests if there is one,
/// else the labels the runtime gave, owned by a workload whose template they match.
pub fn pod_for(ep: &Endpoint, m: &Cluster) -> Pod {
    let mut pod = m
        .pods
        .iter()
        .find(|p| p.namespace == ep.namespace && p.name == ep.name && p.workload.kind == "Pod")
        .cloned()
        .unwrap_or_else(|| {
            let labels = ep.labels.clone().unwrap_or_default();
            let template = m.pods.iter().find(|t| {
                t.namespace == ep.namespace
                    && t.name == t.workload.name
                    && t.workload.kind != "Pod"
                    && !t.labels.is_empty()
                    && t.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            });
            Pod {
                namespace: ep.namespace.clone(),
                name: ep.name.clone(),
                workload: template.map_or_else(
                    || WorkloadRef {
                        namespace: ep.namespace.clone(),
                        name: ep.name.clone(),
                        kind: "Pod".into(),
                    },
                    |t| t.workload.clone(),
                ),
                named_ports: template.map(|t| t.named_ports.clone()).unwrap_or_default(),
                labels,
                ips: Vec::new(),
                host_network: false,
            }
        });
    if let Some(l) = &ep.labels {
        pod.labels.extend(l.clone());
    }
    pod.ips = ep.ips.clone();
    pod
}
