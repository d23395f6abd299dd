//! septa-perf: per-packet cost of the TC data path under BPF_PROG_TEST_RUN.
//!
//! For each map size (policy entries and ipcache entries, filled with unrelated entries) it
//! measures, in one run on one machine:
//! - `floor`: a non-IP frame (parse and return): the cost of running any program at all;
//! - `established`: a packet of a tracked connection (conntrack fast path), repeat ≥ 1e6;
//! - `new-denied`: a new flow denied by policy (every fallback lookup misses), repeat ≥ 1e6;
//! - `new-allowed`: a new flow allowed by policy, creating a conntrack entry and an event;
//!   each run must see a new 5-tuple, so it is measured over many distinct flows, one run each,
//!   and the kernel-reported time averaged.
//!
//! Each figure is the median of `--rounds` rounds, interleaved across sizes. Writes CSV,
//! Markdown and a gnuplot plot.

use std::{fmt::Write as _, path::PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use dataplane_common::{
    allow, direction, endpoint_flags, isolation, packets::*, parse::*, programs::TC_TO_POD,
    v4_mapped, Config, EndpointInfo, PolicyKey, PolicyValue,
};
use testbed::ScratchDatapath;

#[derive(Parser)]
#[command(about = "Measure ns/packet of septa's TC programs with BPF_PROG_TEST_RUN")]
struct Args {
    /// Output directory for tc_decision.{csv,md,png}.
    #[arg(long, default_value = "perf/results")]
    out: PathBuf,
    /// Map sizes (policy entries = ipcache entries) to measure.
    #[arg(long, value_delimiter = ',', default_value = "0,1000,10000,100000")]
    sizes: Vec<u32>,
    /// Repeat count for the repeatable scenarios (kernel-side loop).
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Distinct flows for new-allowed.
    #[arg(long, default_value_t = 100_000)]
    new_flows: u32,
    /// Rounds per figure; the median is reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

const SUBJ: u32 = 1000;
const PEER: u32 = 2000;
const POD: [u8; 4] = v4(10, 0, 0, 1);
const PEER4: [u8; 4] = v4(10, 0, 0, 2);

struct Row {
    size: u32,
    scenario: &'static str,
    ns: f64,
}

fn setup(size: u32, new_flows: u32) -> Result<ScratchDatapath> {
    let mut dp = ScratchDatapath::load_with("perf", |o| {
        o.policy_entries = size + 1024;
        o.ipcache_entries = size + 1024;
        o.conntrack_entries = (new_flows + 1024).next_power_of_two();
        o.events_bytes = 1 << 24;
    })?;
    dp.set_config(&Config {
        policy_revision: 1,
        flags: 0,
        deny_event_interval_ns: u64::MAX,
    })?;
    dp.set_endpoint(
        dataplane::testrun::TEST_RUN_IFINDEX,
        &EndpointInfo {
            identity: SUBJ,
            isolation: [isolation::ENFORCE, 0],
            flags: endpoint_flags::HAS_IPV4,
            ipv4: v4_mapped(POD),
            ..Default::default()
        },
    )?;
    dp.set_ipcache("10.0.0.2/32".parse()?, PEER)?;
    dp.set_ipcache("10.1.0.0/16".parse()?, PEER)?;
    dp.set_policy(
        &PolicyKey::new(SUBJ, direction::INGRESS, PEER, IPPROTO_TCP, 80, 16),
        &PolicyValue {
            rule_id: 1,
            flags: allow::ENFORCE,
        },
    )?;
    // Unrelated entries: other subjects and peers, and /32s in 11.0.0.0/8.
    for i in 0..size {
        let key = PolicyKey::new(
            5000 + i % 997,
            direction::INGRESS,
            10_000 + i,
            IPPROTO_TCP,
            (i % 60_000) as u16 + 1,
            16,
        );
        dp.set_policy(
            &key,
            &PolicyValue {
                rule_id: 100 + i,
                flags: allow::ENFORCE,
            },
        )?;
        let a = 0x0b00_0000u32 + i * 7 + 1;
        dp.set_ipcache(
            ipnetwork::IpNetwork::V4(ipnetwork::Ipv4Network::new(a.into(), 32)?),
            10_000 + i,
        )?;
    }
    Ok(dp)
}

/// One loaded data path per map size.
struct Bench {
    size: u32,
    dp: ScratchDatapath,
    events: dataplane::EventReader,
    next_flow: u32,
}

const SCENARIOS: [&str; 4] = ["floor", "established", "new-denied", "new-allowed"];

impl Bench {
    fn new(args: &Args, size: u32) -> Result<Self> {
        let mut dp = setup(size, args.new_flows * args.rounds as u32)?;
        let events = dp.take_events()?;
        let b = Bench {
            size,
            dp,
            events,
            next_flow: 0,
        };
        anyhow::ensure!(
            b.dp.test_run(TC_TO_POD, &b.packet("syn"), 1)?.action == -1,
            "setup: SYN must pass"
        );
        anyhow::ensure!(
            b.dp.test_run(TC_TO_POD, &b.packet("new-denied"), 1)?.action == 2,
            "setup: port 81 must drop"
        );
        Ok(b)
    }

    fn packet(&self, scenario: &str) -> Vec<u8> {
        match scenario {
            "floor" => eth(0x0806, &[0; 28]),
            "syn" => ipv4(PEER4, POD, IPPROTO_TCP, &tcp(40000, 80, TCP_SYN)),
            "established" => ipv4(PEER4, POD, IPPROTO_TCP, &tcp(40000, 80, TCP_ACK)),
            _ => ipv4(PEER4, POD, IPPROTO_TCP, &tcp(40000, 81, TCP_SYN)),
        }
    }

    fn run(&self, pkt: &[u8], repeat: u32) -> Result<f64> {
        Ok(self.dp.test_run(TC_TO_POD, pkt, repeat)?.per_run.as_nanos() as f64)
    }

    /// One round of one scenario: mean ns/packet.
    fn round(&mut self, args: &Args, scenario: &str) -> Result<f64> {
        if scenario != "new-allowed" {
            return self.run(&self.packet(scenario), args.repeat);
        }
        let mut total = 0f64;
        for _ in 0..args.new_flows {
            // A distinct tuple per run: sources in 10.1.0.0/16 (the peer's identity) × ports.
            let flow = self.next_flow;
            self.next_flow += 1;
            let (hi, lo) = ((flow / 60_000 / 256) as u8, (flow / 60_000 % 256) as u8);
            let sport = 1024 + (flow % 60_000) as u16;
            total += self.run(
                &ipv4(
                    v4(10, 1, hi, lo),
                    POD,
                    IPPROTO_TCP,
                    &tcp(sport, 80, TCP_SYN),
                ),
                1,
            )?;
            if flow.is_multiple_of(8192) {
                self.events.drain();
            }
        }
        Ok(total / args.new_flows as f64)
    }
}

/// Rounds are interleaved across sizes (round 1 of every size, then round 2, ...), so drift
/// of the machine over the run does not masquerade as growth with size.
fn measure(args: &Args) -> Result<Vec<Row>> {
    let mut benches = Vec::new();
    for &size in &args.sizes {
        eprintln!("septa-perf: loading {size} policy + {size} ipcache entries ...");
        benches.push(Bench::new(args, size).with_context(|| format!("size {size}"))?);
    }
    let mut samples: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); SCENARIOS.len()]; benches.len()];
    for r in 0..args.rounds {
        eprintln!("septa-perf: round {}/{}", r + 1, args.rounds);
        for (si, scenario) in SCENARIOS.iter().enumerate() {
            for (bi, b) in benches.iter_mut().enumerate() {
                samples[bi][si].push(b.round(args, scenario)?);
            }
        }
    }
    let mut rows = Vec::new();
    for (bi, b) in benches.iter().enumerate() {
        for (si, scenario) in SCENARIOS.iter().enumerate() {
            rows.push(Row {
                size: b.size,
                scenario,
                ns: perf::median(samples[bi][si].clone()),
            });
        }
    }
    Ok(rows)
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let rows = measure(&args)?;
    let mut csv = String::from("entries,scenario,ns_per_packet\n");
    for r in &rows {
        writeln!(csv, "{},{},{:.1}", r.size, r.scenario, r.ns)?;
    }
    std::fs::write(args.out.join("tc_decision.csv"), &csv)?;
    std::fs::write(args.out.join("tc_decision.md"), markdown(&args, &rows))?;
    plot(&args, &rows)?;
    print!("{}", markdown(&args, &rows));
    Ok(())
}

fn get(rows: &[Row], size: u32, s: &str) -> f64 {
    rows.iter()
        .find(|r| r.size == size && r.scenario == s)
        .map(|r| r.ns)
        .unwrap_or(f64::NAN)
}

fn markdown(args: &Args, rows: &[Row]) -> String {
    let scen = SCENARIOS;
    let mut md = String::new();
    let _ = writeln!(md, "# TC decision cost (BPF_PROG_TEST_RUN)\n");
    let _ = writeln!(md, "Reproduce: `make perf` (= `cargo run --release -p perf --bin septa-perf -- --out perf/results`).");
    let _ = writeln!(md, "Repeat {} for floor/established/new-denied; {} distinct flows (one run each) for new-allowed; median of {} rounds.", args.repeat, args.new_flows, args.rounds);
    let _ = writeln!(md, "Kernel {}, {} CPUs. ns/packet; ratio columns are against the same scenario with 0 entries.\n", perf::kernel(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    let _ = write!(md, "| entries |");
    for s in scen {
        let _ = write!(md, " {s} ns | {s} ×0 |");
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "|---:|{}", "---:|---:|".repeat(scen.len()));
    let base = args.sizes.first().copied().unwrap_or(0);
    for &size in &args.sizes {
        let _ = write!(md, "| {size} |");
        for s in scen {
            let v = get(rows, size, s);
            let _ = write!(md, " {v:.1} | {:.2} |", v / get(rows, base, s));
        }
        let _ = writeln!(md);
    }
    let last = *args.sizes.last().unwrap_or(&0);
    let _ = writeln!(
        md,
        "\nEstablished flow: {:.1} ns at {base} entries, {:.1} ns at {last} ({:+.1}%). Above the program floor: {:.1} → {:.1} ns.",
        get(rows, base, "established"),
        get(rows, last, "established"),
        (get(rows, last, "established") / get(rows, base, "established") - 1.0) * 100.0,
        get(rows, base, "established") - get(rows, base, "floor"),
        get(rows, last, "established") - get(rows, last, "floor"),
    );
    md
}

fn plot(args: &Args, rows: &[Row]) -> Result<()> {
    let table: Vec<(u64, Vec<f64>)> = args
        .sizes
        .iter()
        .map(|&size| {
            (
                size as u64,
                SCENARIOS.iter().map(|s| get(rows, size, s)).collect(),
            )
        })
        .collect();
    perf::plot_ns_per_packet(
        &args.out,
        "tc_decision",
        "septa TC program: ns/packet vs policy + ipcache entries (BPF_PROG_TEST_RUN)",
        "entries in policy map and in ipcache (0 drawn at 1)",
        &SCENARIOS,
        &table,
    )
}
