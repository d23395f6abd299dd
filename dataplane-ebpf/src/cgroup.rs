//! cgroup_skb programs on cgroup workloads (processes outside pods): the same data path as a
//! pod's veth, keyed by the workload's cgroup slot instead of an interface.

use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};
use dataplane_common::{direction, parse::PacketBytes};

use crate::{datapath::*, maps::*};

/// cgroup_skb programs answer 1 (let through) or 0 (drop).
#[cgroup_skb(egress)]
pub fn cg_egress(ctx: SkBuffContext) -> i32 {
    cgroup(&ctx, direction::EGRESS)
}

#[cgroup_skb(ingress)]
pub fn cg_ingress(ctx: SkBuffContext) -> i32 {
    cgroup(&ctx, direction::INGRESS)
}

#[inline(always)]
fn cgroup(ctx: &SkBuffContext, dir: u8) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let id = unsafe { aya_ebpf::helpers::bpf_skb_cgroup_id(ctx.skb.skb) };
    // A cgroup under an attached one but never registered gets the node's fail mode, through
    // the "no endpoint" path (slot 0 has no entry).
    // SAFETY: copied out at once.
    let slot = unsafe { CG_SLOTS.get(&id).copied() }.unwrap_or(0);
    let ethertype = u16::from_be(ctx.skb.protocol() as u16);
    // cgroup workloads have no interface to re-inject answers into: no hold-back.
    match handle(
        &SkbL3(ctx),
        Some(ethertype),
        slot,
        ctx.len() as u64,
        dir,
        false,
    ) {
        Verdict::Drop => 0,
        _ => 1,
    }
}

/// A cgroup skb starts at the IP header; read through the helper.
struct SkbL3<'a>(&'a SkBuffContext);

impl PacketBytes for SkbL3<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.0.load::<[u8; N]>(offset).ok()
    }
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len() as usize
    }
}
