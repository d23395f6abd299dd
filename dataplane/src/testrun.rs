//! Running a loaded program on a packet with `BPF_PROG_TEST_RUN`.
//!
//! The kernel runs TC programs on an skb whose device is the loopback (ifindex 1) unless the
//! context names another; septa's tests and benchmarks register their endpoint on ifindex 1.

use std::time::Duration;

use aya::programs::{Program, TestRun, TestRunOptions};

use crate::{Datapath, Error};

/// The interface index `BPF_PROG_TEST_RUN` gives the skb by default (loopback).
pub const TEST_RUN_IFINDEX: u32 = 1;

/// The result of a test run.
#[derive(Clone, Copy, Debug)]
pub struct RunResult {
    /// The program's return value (see [`Datapath::test_run`]).
    pub action: i32,
    /// Mean time per run, as the kernel measured it.
    pub per_run: Duration,
}

impl Datapath {
    /// Run program `name` (a TC or XDP program) on `packet` (an Ethernet frame) `repeat`
    /// times. The action is the program's return value: TC `-1` pass/next, `2` drop; XDP
    /// `2` pass, `1` drop.
    pub fn test_run(&self, name: &str, packet: &[u8], repeat: u32) -> Result<RunResult, Error> {
        self.test_run_ctx(name, packet, repeat, None)
    }

    /// [`Datapath::test_run`] of a TC program on an skb with this `mark`.
    pub fn test_run_marked(
        &self,
        name: &str,
        packet: &[u8],
        mark: u32,
    ) -> Result<RunResult, Error> {
        // struct __sk_buff starts len, pkt_type, mark (the kernel wants the first two zero).
        let mut ctx = [0u8; 12];
        ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
        self.test_run_ctx(name, packet, 1, Some(&ctx))
    }

    fn test_run_ctx(
        &self,
        name: &str,
        packet: &[u8],
        repeat: u32,
        ctx: Option<&[u8]>,
    ) -> Result<RunResult, Error> {
        let prog = self.ebpf().program(name).ok_or_else(|| Error::Missing {
            kind: "program",
            name: name.into(),
        })?;
        let mut out = vec![0u8; packet.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat: repeat.max(1),
            ctx_in: ctx,
            ..TestRunOptions::new()
        };
        let res = match prog {
            Program::SchedClassifier(p) => p.test_run(opts),
            Program::Xdp(p) => p.test_run(opts),
            _ => {
                return Err(Error::Missing {
                    kind: "TC or XDP program",
                    name: name.into(),
                })
            }
        }
        .map_err(|source| Error::Program {
            name: name.into(),
            source,
        })?;
        Ok(RunResult {
            action: res.return_value as i32,
            per_run: res.duration,
        })
    }
}
