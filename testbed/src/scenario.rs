//! A client pod and a server pod on one node with the data path attached to both, the server
//! isolated for ingress: the smallest setting in which allow, deny and revoke are observable.

use std::{net::IpAddr, time::Duration};

use crate::ScratchDatapath;
use anyhow::Result;
use dataplane::EventReader;
use dataplane_common::{
    allow, direction, endpoint_flags, identity, isolation, v4_mapped, EndpointInfo, FlowEvent,
    PolicyKey, PolicyValue,
};
use hostnet::netns::in_netns;

use super::{
    bed::{Bed, Pod},
    traffic::poll_until,
};

/// Identity of the client pod.
pub const CLIENT_ID: u32 = 1000;
/// Identity of the server pod.
pub const SERVER_ID: u32 = 2000;

pub struct Scenario {
    pub dp: ScratchDatapath,
    pub events: EventReader,
    pub client: Pod,
    pub server: Pod,
    /// Every event seen so far (tests look back through it).
    pub seen: Vec<FlowEvent>,
    // Dropped last: the namespaces outlive the attachments.
    pub bed: Bed,
}

impl Scenario {
    pub fn new(tag: &str) -> Result<Self> {
        let mut bed = Bed::new(tag)?;
        let client = bed.add_pod("client", 2)?;
        let server = bed.add_pod("server", 3)?;
        let mut dp = ScratchDatapath::load_configured(tag)?;
        for (pod, id, iso_in) in [
            (&client, CLIENT_ID, 0),
            (&server, SERVER_ID, isolation::ENFORCE),
        ] {
            dp.set_endpoint(
                pod.host_ifindex,
                &EndpointInfo {
                    identity: id,
                    isolation: [iso_in, 0],
                    flags: endpoint_flags::HAS_IPV4 | endpoint_flags::HAS_IPV6,
                    ipv4: v4_mapped(pod.ipv4.octets()),
                    ipv6: pod.ipv6.octets(),
                    endpoint_id: id,
                    ..Default::default()
                },
            )?;
            dp.set_ipcache(IpAddr::V4(pod.ipv4).into(), id)?;
            dp.set_ipcache(IpAddr::V6(pod.ipv6).into(), id)?;
        }
        dp.set_ipcache(IpAddr::V4(bed.bridge_v4).into(), identity::HOST)?;
        let node = bed.node_path();
        for pod in [&client, &server] {
            let iface = pod.host_if.clone();
            in_netns(&node, || dp.attach(&iface))??;
        }
        let events = dp.take_events()?;
        Ok(Self {
            dp,
            events,
            client,
            server,
            seen: Vec::new(),
            bed,
        })
    }

    /// Allow the client to reach the server on `proto`/`port` (server ingress).
    pub fn allow(&mut self, proto: u8, port: u16, rule_id: u32) -> Result<PolicyKey> {
        let key = PolicyKey::new(SERVER_ID, direction::INGRESS, CLIENT_ID, proto, port, 16);
        self.dp.set_policy(
            &key,
            &PolicyValue {
                rule_id,
                flags: allow::ENFORCE,
            },
        )?;
        self.dp.bump_revision()?;
        Ok(key)
    }

    /// Remove an entry and bump the revision, as the agent does for a policy change.
    pub fn revoke(&mut self, key: &PolicyKey) -> Result<()> {
        self.dp.remove_policy(key)?;
        self.dp.bump_revision()?;
        Ok(())
    }

    /// Wait (with a deadline) for an event matching `pred`, among those not yet seen.
    pub fn wait_event(
        &mut self,
        within: Duration,
        pred: impl Fn(&FlowEvent) -> bool,
    ) -> Option<FlowEvent> {
        let start = self.seen.len();
        poll_until(within, || {
            self.seen.extend(self.events.drain());
            self.seen[start..].iter().find(|e| pred(e)).copied()
        })
    }
}
