//! septa-perf-feeds: the cost of threat-feed blocklists.
//!
//! 1. **ns/packet** of `xdp_host` and `tc_from_pod` under `BPF_PROG_TEST_RUN` with 0, 100k and
//!    1M feed entries: a non-IP frame (the program floor), a packet from/to an unlisted
//!    address (a trie miss, then for TC the policy chain), a packet from/to a listed one
//!    (dropped). Median of `--rounds`, rounds interleaved across sizes.
//! 2. **Load and update** of a 1M-entry feed through the agent's own code: parse, merge,
//!    diff, write the tries; then a 1% change (10k out, 10k in) as a diff. Time, process
//!    memory and the kernel's memory for the tries.
//! 3. **Packets per second dropped** on a veth: a generator (XDP live frames, kernel speed)
//!    sends UDP from a listed source into a veth whose other end drops it with (a) septa's XDP
//!    program, (b) an nftables set in a netdev ingress chain, (c) an ipset matched from
//!    iptables' raw PREROUTING, each holding the same list. Same run, rounds interleaved.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use agent::feeds::{
    parse::parse,
    spec::Format,
    store::{diff, Blocklist, Store},
};
use anyhow::{bail, Context, Result};
use clap::Parser;
use dataplane::testrun::TEST_RUN_IFINDEX;
use dataplane_common::{
    block_action::DROP,
    endpoint_flags, isolation, maps,
    packets::*,
    parse::*,
    programs::{PERF_XDP_PASS, PERF_XDP_REDIRECT, TC_FROM_POD, XDP_HOST},
    v4_mapped, Config, EndpointInfo,
};
use hostnet::netns::in_netns;
use testbed::{bed::ip, ScratchDatapath};

#[derive(Parser)]
#[command(
    about = "Measure septa's threat-feed blocklists: ns/packet, load/update, drop rate vs nftables and ipset"
)]
struct Args {
    /// Output directory for feeds.{md,csv,png}.
    #[arg(long, default_value = "perf/results")]
    out: PathBuf,
    /// Feed sizes for ns/packet.
    #[arg(long, value_delimiter = ',', default_value = "0,100000,1000000")]
    sizes: Vec<usize>,
    /// Kernel repeat count per ns/packet figure.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Rounds per figure (median reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Entries in the list for the drop-rate comparison.
    #[arg(long, default_value_t = 100_000)]
    pps_entries: usize,
    /// Frames sent per drop-rate round.
    #[arg(long, default_value_t = 2_000_000)]
    frames: u32,
}

const POD: [u8; 4] = v4(10, 0, 0, 1);
const LISTED: [u8; 4] = v4(203, 0, 113, 9);
const UNLISTED: [u8; 4] = v4(192, 0, 2, 77);

/// `n` distinct networks shaped like public lists (9 in 10 single addresses, the rest /24s),
/// from a fixed seed, avoiding the test addresses' ranges; then the listed test address.
fn feed(n: usize) -> Vec<String> {
    let mut set = BTreeSet::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while set.len() < n.saturating_sub(1) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let a = (x >> 16) as u32;
        let first = a >> 24;
        if first == 0 || first == 10 || first == 127 || first >= 192 {
            continue;
        }
        let entry = if x.is_multiple_of(10) {
            format!("{}/24", Ipv4Addr::from(a & 0xffff_ff00))
        } else {
            Ipv4Addr::from(a).to_string()
        };
        set.insert(entry);
    }
    let mut v: Vec<String> = set.into_iter().collect();
    if n > 0 {
        v.push(Ipv4Addr::from(LISTED).to_string());
    }
    v
}

/// The kernel memory a pinned map holds (bpftool's `bytes_memlock`).
fn map_memlock(pin: &Path) -> u64 {
    let out = Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(pin)
        .output();
    out.ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| v["bytes_memlock"].as_u64())
        .unwrap_or(0)
}

/// A data path with one egress-isolated endpoint (no allows: new flows are policy-denied)
/// and the feed written through the agent's store and diff code.
struct Loaded {
    dp: ScratchDatapath,
    store: Store,
    applied: Blocklist,
}

fn load(tag: &str, lines: &[String]) -> Result<Loaded> {
    let mut dp = ScratchDatapath::load(tag)?;
    dp.set_config(&Config {
        policy_revision: 1,
        flags: 0,
        // One denial event per flow per hour: the benchmark repeats one flow.
        deny_event_interval_ns: 3_600_000_000_000,
    })?;
    dp.set_endpoint(
        TEST_RUN_IFINDEX,
        &EndpointInfo {
            identity: 1000,
            isolation: [0, isolation::ENFORCE],
            flags: endpoint_flags::HAS_IPV4,
            ipv4: v4_mapped(POD),
            endpoint_id: 1,
            ..Default::default()
        },
    )?;
    let mut l = Loaded {
        dp,
        store: Store::new(vec![]),
        applied: Blocklist::new(),
    };
    l.set(lines)?;
    Ok(l)
}

impl Loaded {
    fn set(&mut self, lines: &[String]) -> Result<(usize, usize)> {
        let body = lines.join("\n");
        self.store
            .accept("bench", [DROP; 3], parse(body.as_bytes(), Format::Lines))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (desired, _) = self.store.desired();
        let d = diff(&self.applied, &desired);
        self.dp.apply_blocklist(&d)?;
        self.applied = desired;
        Ok((d.upsert.len(), d.remove.len()))
    }
}

const SCENARIOS: [(&str, &str); 5] = [
    ("xdp-floor", XDP_HOST),
    ("xdp-unlisted", XDP_HOST),
    ("xdp-listed", XDP_HOST),
    ("tc-unlisted", TC_FROM_POD),
    ("tc-listed", TC_FROM_POD),
];

fn packet(scenario: &str) -> Vec<u8> {
    match scenario {
        "xdp-floor" => eth(0x0806, &[0; 28]),
        "xdp-unlisted" => ipv4(UNLISTED, POD, IPPROTO_UDP, &udp(5000, 53, 32)),
        "xdp-listed" => ipv4(LISTED, POD, IPPROTO_UDP, &udp(5000, 53, 32)),
        "tc-unlisted" => ipv4(POD, UNLISTED, IPPROTO_TCP, &tcp(40000, 443, TCP_SYN)),
        _ => ipv4(POD, LISTED, IPPROTO_TCP, &tcp(40000, 443, TCP_SYN)),
    }
}

/// Part 1: ns/packet per scenario and size.
fn per_packet(args: &Args) -> Result<Vec<(usize, &'static str, f64)>> {
    let mut loaded = Vec::new();
    for &n in &args.sizes {
        eprintln!("septa-perf-feeds: loading {n} feed entries ...");
        let l = load(&format!("pf{n}"), &feed(n))?;
        // The drop scenarios must drop and the miss scenarios must not be feed decisions.
        let xdp_listed = l.dp.test_run(XDP_HOST, &packet("xdp-listed"), 1)?.action;
        if (n > 0) != (xdp_listed == 1) {
            bail!("size {n}: xdp-listed returned {xdp_listed}");
        }
        loaded.push((n, l));
    }
    let mut samples = vec![vec![Vec::new(); SCENARIOS.len()]; loaded.len()];
    for r in 0..args.rounds {
        eprintln!(
            "septa-perf-feeds: ns/packet round {}/{}",
            r + 1,
            args.rounds
        );
        for (si, (s, prog)) in SCENARIOS.iter().enumerate() {
            for (li, (_, l)) in loaded.iter().enumerate() {
                let res = l.dp.test_run(prog, &packet(s), args.repeat)?;
                samples[li][si].push(res.per_run.as_nanos() as f64);
            }
        }
    }
    let mut rows = Vec::new();
    for (li, (n, _)) in loaded.iter().enumerate() {
        for (si, (s, _)) in SCENARIOS.iter().enumerate() {
            rows.push((*n, *s, perf::median(samples[li][si].clone())));
        }
    }
    Ok(rows)
}

/// Part 2: load a 1M-entry feed, then apply a 1% change.
struct LoadFigures {
    entries: usize,
    parse_ms: f64,
    merge_ms: f64,
    write_ms: f64,
    rss_mib: f64,
    kernel_mib: f64,
    update_changed: usize,
    update_upserts: usize,
    update_removals: usize,
    update_ms: f64,
    update_write_ms: f64,
}

fn load_and_update() -> Result<LoadFigures> {
    let n = 1_000_000;
    let lines = feed(n);
    let body = lines.join("\n");
    let rss0 = perf::status_mib(None, "VmRSS");
    let mut dp = ScratchDatapath::load("pfload")?;
    let t = Instant::now();
    let parsed = parse(body.as_bytes(), Format::Lines).map_err(|e| anyhow::anyhow!(e))?;
    let parse_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let mut store = Store::new(vec![]);
    store
        .accept("bench", [DROP; 3], Ok(parsed))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (desired, _) = store.desired();
    let d = diff(&Blocklist::new(), &desired);
    let merge_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    dp.apply_blocklist(&d)?;
    let write_ms = t.elapsed().as_secs_f64() * 1e3;
    drop(d);
    let rss_mib = (perf::status_mib(None, "VmRSS") - rss0).max(0.0);
    let kernel = map_memlock(&dp.pin_dir().join(maps::BLOCK_V4));
    let entries = desired.len();

    // 1% churn: the first 10k entries leave, 10k new ones arrive.
    let mut changed: Vec<String> = lines[10_000..].to_vec();
    changed.extend((0..10_000u32).map(|i| Ipv4Addr::from(0xc612_0000 + i).to_string()));
    let body2 = changed.join("\n");
    let t = Instant::now();
    let parsed = parse(body2.as_bytes(), Format::Lines).map_err(|e| anyhow::anyhow!(e))?;
    store
        .accept("bench", [DROP; 3], Ok(parsed))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (desired2, _) = store.desired();
    let d2 = diff(&desired, &desired2);
    let tw = Instant::now();
    dp.apply_blocklist(&d2)?;
    let update_write_ms = tw.elapsed().as_secs_f64() * 1e3;
    let update_ms = t.elapsed().as_secs_f64() * 1e3;
    if dp.blocklist()? != desired2 {
        bail!("the tries do not hold the updated list");
    }
    Ok(LoadFigures {
        entries,
        parse_ms,
        merge_ms,
        write_ms,
        rss_mib,
        kernel_mib: kernel as f64 / (1 << 20) as f64,
        update_changed: 20_000,
        update_upserts: d2.upsert.len(),
        update_removals: d2.remove.len(),
        update_ms,
        update_write_ms,
    })
}

/// Part 3 set-up: namespaces `gen` and `sink` joined by veth `vg` / `vs`.
struct Pair {
    gen: String,
    sink: String,
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.gen]);
        let _ = ip(&["netns", "del", &self.sink]);
    }
}

fn netns(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

fn sh_in(ns: &str, cmd: &str, stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", cmd])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd}"))?;
    if let Some(s) = stdin {
        child.stdin.take().expect("stdin").write_all(s.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{cmd}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pair() -> Result<Pair> {
    let id = std::process::id();
    let p = Pair {
        gen: format!("septa-pf-gen-{id}"),
        sink: format!("septa-pf-sink-{id}"),
    };
    ip(&["netns", "add", &p.gen])?;
    ip(&["netns", "add", &p.sink])?;
    for a in [
        vec![
            "-n", &p.gen, "link", "add", "vg", "type", "veth", "peer", "name", "vs", "netns",
            &p.sink,
        ],
        vec!["-n", &p.gen, "link", "set", "vg", "up"],
        vec!["-n", &p.sink, "addr", "add", "10.0.0.1/24", "dev", "vs"],
        vec!["-n", &p.sink, "link", "set", "vs", "up"],
    ] {
        ip(&a)?;
    }
    Ok(p)
}

fn ifindex_mac(ns: &str, dev: &str) -> Result<(u32, [u8; 6])> {
    let j = sh_in(ns, &format!("ip -j link show {dev}"), None)?;
    let v: serde_json::Value = serde_json::from_str(&j)?;
    let idx = v[0]["ifindex"].as_u64().context("ifindex")? as u32;
    let mac: Vec<u8> = v[0]["address"]
        .as_str()
        .context("address")?
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()?;
    Ok((idx, mac.try_into().map_err(|_| anyhow::anyhow!("mac"))?))
}

/// One drop-rate measurement: the generator sends `frames`; returns (dropped, seconds).
type Counter<'a> = Box<dyn Fn() -> Result<u64> + 'a>;

fn blast(
    gen: &ScratchDatapath,
    gen_ns: &str,
    ifindex: u32,
    frame: &[u8],
    frames: u32,
) -> Result<f64> {
    use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp};
    let prog: &Xdp = gen
        .ebpf()
        .program(PERF_XDP_REDIRECT)
        .context("generator program")?
        .try_into()?;
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    // The kernel wants data_end = the frame's length when a context is given.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    let t = in_netns(&netns(gen_ns), || {
        let t = Instant::now();
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: frames,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..TestRunOptions::new()
        })
        .map(|_| t.elapsed().as_secs_f64())
    })?
    .context("live-frames test run")?;
    Ok(t)
}

struct PpsRow {
    name: &'static str,
    dropped_per_s: f64,
    dropped_fraction: f64,
    load_ms: f64,
}

fn drop_rate(args: &Args) -> Result<Vec<PpsRow>> {
    let p = pair()?;
    let lines = feed(args.pps_entries);
    let (gen_if, gen_mac) = ifindex_mac(&p.gen, "vg")?;
    let (_, sink_mac) = ifindex_mac(&p.sink, "vs")?;
    let mut frame = ipv4(LISTED, v4(10, 0, 0, 1), IPPROTO_UDP, &udp(5000, 9, 18));
    frame[0..6].copy_from_slice(&sink_mac);
    frame[6..12].copy_from_slice(&gen_mac);

    // The generator: its own scratch data path object, only for the redirect program.
    let mut gen = ScratchDatapath::load("pfgen")?;
    dataplane::loader::program::<aya::programs::Xdp>(gen.ebpf_mut(), PERF_XDP_REDIRECT)?
        .load()
        .context("loading the generator")?;

    // septa: XDP on the sink's veth with the feed (load time: the list, not the programs).
    let mut septa = load("pfsink", &[])?;
    let t = Instant::now();
    septa.set(&lines)?;
    let septa_load = t.elapsed().as_secs_f64() * 1e3;
    let sink_path = netns(&p.sink);

    // nftables: a set in a netdev ingress chain on the same veth.
    let mut nft = String::from("table netdev septa_bench {\n counter drops {}\n set bl { type ipv4_addr; flags interval; auto-merge; elements = {\n");
    nft.push_str(&lines.join(",\n"));
    nft.push_str("\n} }\n chain in { type filter hook ingress device \"vs\" priority -500; policy accept; ip saddr @bl counter name drops drop; }\n}\n");
    // ipset + iptables raw PREROUTING.
    let mut ipset = String::from("create septa_bl hash:net maxelem 4194304\n");
    for l in &lines {
        let _ = writeln!(ipset, "add septa_bl {l}");
    }

    let mut rows = Vec::new();
    let names = [
        "septa XDP",
        "nftables set (netdev ingress)",
        "ipset (iptables raw)",
    ];
    let mut samples: Vec<Vec<(f64, f64)>> = vec![Vec::new(); names.len()];
    let mut loads = [septa_load, 0.0, 0.0];
    for r in 0..args.rounds {
        eprintln!(
            "septa-perf-feeds: drop-rate round {}/{}",
            r + 1,
            args.rounds
        );
        for (i, sample) in samples.iter_mut().enumerate() {
            // Set up this mechanism alone on the sink; tear down after.
            let mut pass_link = None;
            let counter: Counter = match i {
                0 => {
                    in_netns(&sink_path, || septa.dp.attach_xdp("vs"))??;
                    let dp = &septa.dp;
                    Box::new(move || Ok(dp.feed_counts()?[1].drops))
                }
                1 => {
                    pass_link = Some(attach_pass(&mut gen, &sink_path)?);
                    let t = Instant::now();
                    sh_in(&p.sink, "nft -f -", Some(&nft))?;
                    loads[1] = t.elapsed().as_secs_f64() * 1e3;
                    let ns = p.sink.clone();
                    Box::new(move || {
                        let out = sh_in(&ns, "nft list counter netdev septa_bench drops", None)?;
                        parse_after(&out, "packets ")
                    })
                }
                _ => {
                    pass_link = Some(attach_pass(&mut gen, &sink_path)?);
                    let t = Instant::now();
                    sh_in(&p.sink, "ipset restore", Some(&ipset))?;
                    sh_in(
                        &p.sink,
                        "iptables -t raw -A PREROUTING -i vs -m set --match-set septa_bl src -j DROP",
                        None,
                    )?;
                    loads[2] = t.elapsed().as_secs_f64() * 1e3;
                    let ns = p.sink.clone();
                    Box::new(move || {
                        let out = sh_in(&ns, "iptables -t raw -L PREROUTING -v -x -n", None)?;
                        out.lines()
                            .find(|l| l.contains("match-set"))
                            .and_then(|l| l.split_whitespace().next())
                            .and_then(|v| v.parse().ok())
                            .context("iptables counter")
                    })
                }
            };
            let before = counter()?;
            let secs = blast(&gen, &p.gen, gen_if, &frame, args.frames)?;
            let dropped = counter()? - before;
            drop(counter);
            sample.push((dropped as f64 / secs, dropped as f64 / args.frames as f64));
            match i {
                0 => {
                    // The XDP link lives as long as its pin: removing it detaches.
                    std::fs::remove_file(septa.dp.pin_dir().join("xdp").join("vs"))?;
                }
                1 => sh_in(&p.sink, "nft delete table netdev septa_bench", None).map(drop)?,
                _ => sh_in(
                    &p.sink,
                    "iptables -t raw -F PREROUTING && ipset destroy septa_bl",
                    None,
                )
                .map(drop)?,
            }
            if let Some(id) = pass_link {
                detach_pass(&mut gen, id)?;
            }
        }
    }
    for (i, name) in names.iter().enumerate() {
        rows.push(PpsRow {
            name,
            dropped_per_s: perf::median(samples[i].iter().map(|s| s.0).collect()),
            dropped_fraction: perf::median(samples[i].iter().map(|s| s.1).collect()),
            load_ms: loads[i],
        });
    }
    drop(septa);
    Ok(rows)
}

/// Receiving XDP redirects on a veth needs an XDP program on it; nftables and ipset get a
/// pass-through one (the same cost septa's program has on top of its lookup).
fn attach_pass(gen: &mut ScratchDatapath, sink: &Path) -> Result<aya::programs::xdp::XdpLinkId> {
    let prog = dataplane::loader::program::<aya::programs::Xdp>(gen.ebpf_mut(), PERF_XDP_PASS)?;
    if prog.fd().is_err() {
        prog.load()?;
    }
    Ok(in_netns(sink, || {
        prog.attach("vs", aya::programs::XdpMode::Default)
    })??)
}

fn detach_pass(gen: &mut ScratchDatapath, id: aya::programs::xdp::XdpLinkId) -> Result<()> {
    let prog = dataplane::loader::program::<aya::programs::Xdp>(gen.ebpf_mut(), PERF_XDP_PASS)?;
    prog.detach(id)?;
    Ok(())
}

fn parse_after(text: &str, key: &str) -> Result<u64> {
    text.split(key)
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no `{key}` in {text}"))
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let rows = per_packet(&args)?;
    eprintln!("septa-perf-feeds: load and update of a 1M-entry feed ...");
    let lf = load_and_update()?;
    let pps = drop_rate(&args)?;
    let md = markdown(&args, &rows, &lf, &pps);
    let mut csv = String::from("part,entries,scenario,value,unit\n");
    for (n, s, ns) in &rows {
        let _ = writeln!(csv, "per_packet,{n},{s},{ns:.1},ns");
    }
    for r in &pps {
        let _ = writeln!(
            csv,
            "drop_rate,{},{},{:.0},packets_per_s",
            args.pps_entries, r.name, r.dropped_per_s
        );
    }
    let _ = writeln!(
        csv,
        "load,{},parse+merge+write,{:.0},ms",
        lf.entries,
        lf.parse_ms + lf.merge_ms + lf.write_ms
    );
    let _ = writeln!(
        csv,
        "update,{},1% change,{:.0},ms",
        lf.entries, lf.update_ms
    );
    std::fs::write(args.out.join("feeds.csv"), csv)?;
    std::fs::write(args.out.join("feeds.md"), &md)?;
    plot(&args, &rows)?;
    print!("{md}");
    Ok(())
}

fn get(rows: &[(usize, &str, f64)], n: usize, s: &str) -> f64 {
    rows.iter()
        .find(|r| r.0 == n && r.1 == s)
        .map_or(f64::NAN, |r| r.2)
}

fn markdown(args: &Args, rows: &[(usize, &str, f64)], lf: &LoadFigures, pps: &[PpsRow]) -> String {
    let mut md = String::from("# Threat-feed blocklists\n\n");
    let _ = writeln!(md, "Reproduce: `cargo run --release -p perf --bin septa-perf-feeds -- --out perf/results`. Kernel {}, {} CPUs.\n", perf::kernel(), std::thread::available_parallelism().map_or(0, |n| n.get()));
    let _ = writeln!(
        md,
        "## ns/packet (BPF_PROG_TEST_RUN, repeat {}, median of {} rounds)\n",
        args.repeat, args.rounds
    );
    let _ = write!(md, "| feed entries |");
    for (s, _) in SCENARIOS {
        let _ = write!(md, " {s} | ×0 |");
    }
    let _ = writeln!(md, "\n|---:|{}", "---:|---:|".repeat(SCENARIOS.len()));
    let base = args.sizes[0];
    for &n in &args.sizes {
        let _ = write!(md, "| {n} |");
        for (s, _) in SCENARIOS {
            let v = get(rows, n, s);
            let _ = write!(md, " {v:.1} | {:.2} |", v / get(rows, base, s));
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "\n`xdp-listed` and `tc-listed` at 0 entries are not drops (nothing is listed): they are the same packets passing the empty trie (XDP) or denied by policy (TC).\n");
    let _ = writeln!(md, "## Load and update of a {}-entry feed (agent code path: parse, merge, diff, write the tries)\n", lf.entries);
    let _ = writeln!(md, "| step | time |\n|---|---:|");
    let _ = writeln!(md, "| parse | {:.0} ms |\n| merge + diff | {:.0} ms |\n| write 1M entries to the LPM trie | {:.0} ms |", lf.parse_ms, lf.merge_ms, lf.write_ms);
    let _ = writeln!(
        md,
        "| **load total** | **{:.0} ms** |",
        lf.parse_ms + lf.merge_ms + lf.write_ms
    );
    let _ = writeln!(md, "| update: {} entries changed (1%) → {} upserts, {} removals: parse + merge + diff + write | {:.0} ms (write {:.0} ms) |\n", lf.update_changed, lf.update_upserts, lf.update_removals, lf.update_ms, lf.update_write_ms);
    let _ = writeln!(md, "Memory: the agent process grows {:.0} MiB holding the list (last good list + applied copy); the kernel's IPv4 trie holds {:.0} MiB (bpftool `bytes_memlock`).\n", lf.rss_mib, lf.kernel_mib);
    let _ = writeln!(
        md,
        "## Drop rate on a veth, {} listed entries, {} frames per round, median of {} rounds\n",
        args.pps_entries, args.frames, args.rounds
    );
    let _ = writeln!(md, "A generator (XDP live frames) sends UDP from a listed source into a veth; the other end drops it. Rate = packets counted dropped by the mechanism / generator wall time.\n");
    let _ = writeln!(md, "| mechanism | dropped/s | × septa | share of frames dropped | list load time |\n|---|---:|---:|---:|---:|");
    let s0 = pps.first().map_or(f64::NAN, |r| r.dropped_per_s);
    for r in pps {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.2} | {:.3} | {:.0} ms |",
            r.name,
            r.dropped_per_s,
            r.dropped_per_s / s0,
            r.dropped_fraction,
            r.load_ms
        );
    }
    md
}

fn plot(args: &Args, rows: &[(usize, &str, f64)]) -> Result<()> {
    let names: Vec<&str> = SCENARIOS.iter().map(|(s, _)| *s).collect();
    let table: Vec<(u64, Vec<f64>)> = args
        .sizes
        .iter()
        .map(|&n| (n as u64, names.iter().map(|s| get(rows, n, s)).collect()))
        .collect();
    perf::plot_ns_per_packet(
        &args.out,
        "feeds",
        "septa threat feeds: ns/packet vs feed entries (BPF_PROG_TEST_RUN)",
        "feed entries (0 drawn at 1)",
        &names,
        &table,
    )
}
