//! Benchmark helpers for `perf/`, never attached by the agent.
//!
//! `perf_xdp_redirect` is a traffic generator: run under `BPF_PROG_TEST_RUN` with live frames
//! it transmits its frame out of the interface it is run on, so a veth pair carries packets at
//! kernel speed to the program (or nftables/ipset rule) under test on the other end.
//! `perf_xdp_pass` lets a veth receive redirected frames when the peer under test is not XDP.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_redirect, macros::xdp, programs::XdpContext};

#[xdp]
pub fn perf_xdp_redirect(ctx: XdpContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    // SAFETY: helper without memory arguments.
    unsafe { bpf_redirect(ifindex, 0) as u32 }
}

#[xdp]
pub fn perf_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
