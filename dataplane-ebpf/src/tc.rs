//! TC programs on the host side of a pod's veth (attached with TCX).
//!
//! - `tc_from_pod` (host-veth ingress): packets the pod sends; the pod's EGRESS policy.
//! - `tc_to_pod` (host-veth egress): packets the pod receives; the pod's INGRESS policy.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, macros::classifier, programs::TcContext};
use dataplane_common::{
    direction, dns_budget, dns_capture, parse::PacketBytes, stats, DnsCapture, DnsQueryCapture,
    DNS_CAPTURE_MAX, DNS_QUERY_CAPTURE_MAX, DNS_REINJECT_MARK,
};

use crate::{datapath::*, maps::*};

#[classifier]
pub fn tc_from_pod(ctx: TcContext) -> i32 {
    tc(&ctx, direction::EGRESS)
}

#[classifier]
pub fn tc_to_pod(ctx: TcContext) -> i32 {
    tc(&ctx, direction::INGRESS)
}

#[inline(always)]
fn tc(ctx: &TcContext, dir: u8) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let (ifindex, mark) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).mark) };
    // DNS of pods with FQDN rules goes through the agent, except the answers it puts back (the
    // mark cannot come from a pod: crossing the veth into this namespace clears it).
    let dns = mark != DNS_REINJECT_MARK;
    match handle(&Skb(ctx), None, ifindex, ctx.len() as u64, dir, dns) {
        Verdict::Pass => PASS,
        Verdict::Drop => DROP,
        Verdict::HoldDns => hold_dns_answer(ctx, ifindex),
        Verdict::CopyDnsQuery => {
            copy_dns_query(ctx, ifindex);
            PASS
        }
    }
}

/// Whether the endpoint in `slot` may hand the agent one more DNS frame now (see
/// [`dns_budget`]). Over budget, a query is not copied and an answer passes unheld: its
/// addresses are not learned, which costs that pod only, never the others sharing the ring.
#[inline(never)]
fn dns_budget_ok(slot: u32) -> bool {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: copied out at once.
    let tat = unsafe { DNS_BUDGET.get(&slot).copied() }.unwrap_or(0);
    match dns_budget::take(tat, now) {
        Some(next) => {
            let _ = DNS_BUDGET.insert(&slot, &next, 0);
            true
        }
        None => {
            count(stats::DNS_OVER_BUDGET);
            false
        }
    }
}

/// Copy a DNS query an FQDN endpoint sent to the agent, which learns only answers matching a
/// query it saw (id, question, resolver and ports). The query itself goes on either way.
///
/// # Fail mode
/// A full ring, a query over [`DNS_QUERY_CAPTURE_MAX`] or an endpoint over its DNS budget:
/// not copied. Its answer is then delivered but not learned (closed for the FQDN allowlist,
/// open for DNS itself).
#[inline(never)]
fn copy_dns_query(ctx: &TcContext, ifindex: u32) {
    let len = ctx.len() as usize;
    if len == 0 || len > DNS_QUERY_CAPTURE_MAX || !dns_budget_ok(ifindex) {
        return;
    }
    let Some(mut slot) = DNS_ANSWERS.reserve::<DnsQueryCapture>(0) else {
        count(stats::DNS_LOST);
        return;
    };
    let cap = slot.as_mut_ptr();
    // SAFETY: `cap` points at a reserved, exclusively ours, DnsQueryCapture.
    let data = unsafe {
        (*cap).ifindex = ifindex;
        (*cap).len = len as u16;
        (*cap).kind = dns_capture::QUERY;
        (*cap)._pad = 0;
        &mut (*cap).data
    };
    let n = len as u32;
    if n == 0 || n > DNS_QUERY_CAPTURE_MAX as u32 {
        slot.discard(0);
        return;
    }
    // SAFETY: `data` has DNS_QUERY_CAPTURE_MAX bytes and 1 <= n <= DNS_QUERY_CAPTURE_MAX.
    let r = unsafe {
        aya_ebpf::helpers::generated::bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            0,
            data.as_mut_ptr() as *mut core::ffi::c_void,
            n,
        )
    };
    if r == 0 {
        slot.submit(0);
        count(stats::DNS_QUERIES);
    } else {
        slot.discard(0);
        count(stats::DNS_LOST);
    }
}

/// Hand a DNS answer to the agent instead of the pod: the agent puts the answered addresses in
/// the FQDN allowlist, then re-injects the frame (marked), so a connection the pod opens right
/// after the lookup finds its entry.
///
/// # Fail mode
/// A full answer ring drops the answer (counted `dns_lost`): the pod's resolver retries, and
/// an answer delivered without its entries would make the first connection fail instead.
/// Frames over [`DNS_CAPTURE_MAX`] pass unheld (counted), and so do answers of an endpoint
/// over its DNS budget: their addresses are not learned.
#[inline(never)]
fn hold_dns_answer(ctx: &TcContext, ifindex: u32) -> i32 {
    let len = ctx.len() as usize;
    if len > DNS_CAPTURE_MAX {
        count(stats::DNS_NOT_HELD);
        return PASS;
    }
    if !dns_budget_ok(ifindex) {
        return PASS;
    }
    let Some(mut slot) = DNS_ANSWERS.reserve::<DnsCapture>(0) else {
        count(stats::DNS_LOST);
        return DROP;
    };
    let cap = slot.as_mut_ptr();
    // SAFETY: `cap` points at a reserved, exclusively ours, DnsCapture.
    let data = unsafe {
        (*cap).ifindex = ifindex;
        (*cap).len = len as u16;
        (*cap).kind = dns_capture::ANSWER;
        (*cap)._pad = 0;
        &mut (*cap).data
    };
    // The helper directly, with the length bounded [1, DNS_CAPTURE_MAX] where the verifier
    // can see it (aya's load_bytes re-reads skb->len and loses the bound).
    let n = len as u32;
    if n == 0 {
        slot.discard(0);
        return PASS;
    }
    // SAFETY: `data` has DNS_CAPTURE_MAX bytes and 1 <= n <= DNS_CAPTURE_MAX.
    let r = unsafe {
        aya_ebpf::helpers::generated::bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            0,
            data.as_mut_ptr() as *mut core::ffi::c_void,
            n,
        )
    };
    if r == 0 {
        slot.submit(0);
        count(stats::DNS_HELD);
    } else {
        slot.discard(0);
        count(stats::DNS_LOST);
    }
    DROP
}

struct Skb<'a>(&'a TcContext);

impl PacketBytes for Skb<'_> {
    /// Direct packet access when the bytes are in the linear part of the skb (no helper
    /// call); `bpf_skb_load_bytes` otherwise, so non-linear skbs parse the same.
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let start = self.0.data();
        let end = self.0.data_end();
        if offset < 0xffff && start + offset + N <= end {
            // SAFETY: bounds checked against data_end just above (the verifier checks too).
            return Some(unsafe { core::ptr::read_unaligned((start + offset) as *const [u8; N]) });
        }
        self.0.load::<[u8; N]>(offset).ok()
    }
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len() as usize
    }
}
