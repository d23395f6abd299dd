//! septa-perf-kube: the Kubernetes source's index at scale.
//!
//! Synthetic watch streams of realistic k8s-openapi objects (see `perf::kube::Shape`): Deployment-owned
//! pods with a pod-template-hash, 10 replicas per app, 20 apps per namespace, six labels, two
//! containers with named ports, the scheduler's tolerations, the service-account volume,
//! managed fields and a running status with its pod IP, about 5 KiB of JSON each; a Service
//! and an EndpointSlice per app; NetworkPolicies that isolate apps across namespaces.
//!
//! - **Memory per pod**: a counting global allocator (every allocation of this process goes
//!   through it) gives the heap bytes live after N pods are applied to an empty
//!   [`Index`], minus before; each pod object is built, applied and dropped in turn, so only
//!   what the index keeps is counted. The same N pods are then kept as k8s-openapi objects, as
//!   they arrive and as the agent's watchers prune them, and counted the same way. The ratio
//!   is the figure: both sides pay the same allocator, on any machine.
//! - **Events absorbed**: with N pods (and the namespaces, Services, slices and policies) in
//!   the index, MODIFIED events that change one pod's labels are applied one after another:
//!   `apply_pod` alone (objects decoded beforehand), and decoding the watch event's JSON
//!   line plus `apply_pod` (what a watch task does per event, short of the pruning, which only
//!   drops fields; the decoded object is dropped inside the timing).
//! - **A change's whole load**: after one such event, [`Index::cluster`], then
//!   [`Compiler::compile`] with the compiler that compiled every load before (as the agent
//!   keeps it), and the diff against the previous state. The ratio of cluster() + compile to
//!   one `apply_pod` says how far per-event recompiles are from keeping up with the watch.
//!
//! Times are wall clock on a shared machine and move between runs; byte counts are exact
//! (for this allocator's requests: malloc adds its own header and rounding per allocation,
//! which is why live allocations are counted too).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    fmt::Write as _,
    path::PathBuf,
    sync::atomic::{AtomicIsize, Ordering},
    time::{Duration, Instant},
};

use agent::source::index::Index;
use anyhow::{Context, Result};
use clap::Parser;
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::WatchEvent};
use perf::kube::Shape;
use policies::compile::{Compiler, StateDiff};
use serde_json::json;

/// The system allocator, counting the bytes and allocations live.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_ALLOCS: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`, which upholds `GlobalAlloc`'s
// contract; the counters are only read, never used to decide anything about memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
            LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
            LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator, that is by `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        LIVE_ALLOCS.fetch_sub(1, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds the rest.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes and allocations live now.
fn live() -> (isize, isize) {
    (
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE_ALLOCS.load(Ordering::Relaxed),
    )
}

#[derive(Parser)]
#[command(
    about = "Measure the Kubernetes source's index: bytes per pod, watch events/s, a change's cluster() + compile"
)]
struct Args {
    /// Output directory for kube.{md,csv}.
    #[arg(long, default_value = "perf/results")]
    out: PathBuf,
    /// Pod counts.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    pods: Vec<usize>,
    /// NetworkPolicies in the index for the event and compile measurements.
    #[arg(long, default_value_t = 1000)]
    policies: usize,
    /// MODIFIED events to time per size (apply alone, and decode + apply).
    #[arg(long, default_value_t = 20000)]
    events: usize,
    /// Changes whose cluster() + compile + diff are timed, per size.
    #[arg(long, value_delimiter = ',', default_value = "20,5")]
    changes: Vec<usize>,
    /// Leave the Services and EndpointSlices out of the index (what they cost the compile).
    #[arg(long)]
    no_services: bool,
}

/// Events are built (untimed) and applied (timed) in batches of this many.
const BATCH: usize = 1000;

/// What the agent's watcher keeps of a pod before `apply_pod`: what a reflector store with
/// the same `.modify()` would hold.
fn prune(p: &mut Pod) {
    agent::source::kube::prune_meta(p);
    agent::source::kube::prune_pod(p);
}

/// Live heap growth, in bytes and allocations, while `f`'s result is alive.
fn held<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, f64)> {
    let before = live();
    let kept = f()?;
    let after = live();
    drop(kept);
    Ok(((after.0 - before.0) as f64, (after.1 - before.1) as f64))
}

struct Memory {
    index: (f64, f64),
    full: (f64, f64),
    pruned: (f64, f64),
    json_bytes: f64,
}

fn memory(s: &Shape) -> Result<Memory> {
    let n = s.pods;
    let index = held(|| {
        let mut ix = Index::new(Duration::from_secs(60));
        for i in 0..n {
            ix.apply_pod(&s.pod(i, false)?)
                .map_err(|d| anyhow::anyhow!("{d:?}"))?;
        }
        anyhow::ensure!(ix.pod_count() == n);
        Ok(ix)
    })?;
    // In a Vec of exactly n: the objects alone, without the map and keys a store adds.
    // (Collecting into a Result would grow the Vec by doubling: its spare room is no pod's.)
    let objects = |pruned: bool| -> Result<Vec<Pod>> {
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            let mut p = s.pod(i, false)?;
            if pruned {
                prune(&mut p);
            }
            v.push(p);
        }
        Ok(v)
    };
    let full = held(|| objects(false))?;
    let pruned = held(|| objects(true))?;
    let sample = n.min(1000);
    let json_bytes = (0..sample)
        .map(|i| serde_json::to_vec(&s.pod_json(s.changed(i), false)).map(|v| v.len()))
        .sum::<Result<usize, _>>()? as f64
        / sample as f64;
    let per = |(b, a): (f64, f64)| (b / n as f64, a / n as f64);
    Ok(Memory {
        index: per(index),
        full: per(full),
        pruned: per(pruned),
        json_bytes,
    })
}

struct Timing {
    apply_us: f64,
    decode_apply_us: f64,
    first_compile_ms: f64,
    cluster_ms: f64,
    compile_ms: f64,
    diff_ms: f64,
    diff_entries: f64,
    identities: usize,
    policy_entries: usize,
}

/// An index holding the whole synthetic cluster.
fn filled(s: &Shape, policies: usize, services: bool) -> Result<Index> {
    let bad = |d: policies::Diagnostic| anyhow::anyhow!("{d:?}");
    let mut ix = Index::new(Duration::from_secs(60));
    for n in 0..s.namespaces {
        ix.apply_namespace(&s.namespace(n)?);
    }
    for i in 0..s.pods {
        ix.apply_pod(&s.pod(i, false)?).map_err(bad)?;
    }
    for a in (0..s.apps).filter(|_| services) {
        let (svc, slice) = s.service(a)?;
        ix.apply_service(&svc).map_err(bad)?;
        ix.apply_slice(&slice).map_err(bad)?;
    }
    for p in 0..policies {
        ix.apply_policy(&s.policy(p, policies)?).map_err(bad)?;
    }
    Ok(ix)
}

fn timing(s: &Shape, args: &Args, changes: usize) -> Result<Timing> {
    let mut ix = filled(s, args.policies, !args.no_services)?;
    let bad = |d: policies::Diagnostic| anyhow::anyhow!("{d:?}");

    // apply_pod alone: events decoded beforehand, in batches (untimed), applied (timed).
    let mut apply = Duration::ZERO;
    for start in (0..args.events).step_by(BATCH) {
        let batch: Vec<Pod> = (start..(start + BATCH).min(args.events))
            .map(|k| s.pod(s.changed(k), true))
            .collect::<Result<_>>()?;
        let t = Instant::now();
        for p in &batch {
            ix.apply_pod(p).map_err(bad)?;
        }
        apply += t.elapsed();
    }
    // The watch event's JSON line decoded, applied and dropped; labels back as they were.
    let mut decode_apply = Duration::ZERO;
    for start in (0..args.events).step_by(BATCH) {
        let lines: Vec<Vec<u8>> = (start..(start + BATCH).min(args.events))
            .map(|k| {
                serde_json::to_vec(
                    &json!({"type": "MODIFIED", "object": s.pod_json(s.changed(k), false)}),
                )
            })
            .collect::<Result<_, _>>()?;
        let t = Instant::now();
        for l in &lines {
            match serde_json::from_slice::<WatchEvent<Pod>>(l)? {
                WatchEvent::Modified(p) => ix.apply_pod(&p).map_err(bad)?,
                _ => anyhow::bail!("not a MODIFIED event"),
            }
        }
        decode_apply += t.elapsed();
    }

    // A change's whole load, with the compiler that compiled the loads before it.
    let mut compiler = Compiler::default();
    let t = Instant::now();
    let mut prev = compiler.compile(&ix.cluster());
    let first_compile_ms = t.elapsed().as_secs_f64() * 1e3;
    let (identities, policy_entries) = (prev.identities.len(), prev.policy.len());
    let (mut cl, mut co, mut di, mut entries) = (vec![], vec![], vec![], vec![]);
    for k in 0..changes {
        ix.apply_pod(&s.pod(s.changed(k), k % 2 == 0)?)
            .map_err(bad)?;
        let t = Instant::now();
        let cluster = ix.cluster();
        cl.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let next = compiler.compile(&cluster);
        co.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let diff = StateDiff::between(&prev, &next);
        di.push(t.elapsed().as_secs_f64() * 1e3);
        entries.push(diff.len() as f64);
        prev = next;
    }
    Ok(Timing {
        apply_us: apply.as_secs_f64() * 1e6 / args.events as f64,
        decode_apply_us: decode_apply.as_secs_f64() * 1e6 / args.events as f64,
        first_compile_ms,
        cluster_ms: perf::median(cl),
        compile_ms: perf::median(co),
        diff_ms: perf::median(di),
        diff_entries: perf::median(entries),
        identities,
        policy_entries,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let mut csv = String::from("measure,pods,value,unit\n");
    let mut mem_rows = Vec::new();
    let mut time_rows = Vec::new();
    for (k, &n) in args.pods.iter().enumerate() {
        let s = Shape::new(n);
        eprintln!("septa-perf-kube: memory at {n} pods ...");
        let m = memory(&s)?;
        let changes = *args
            .changes
            .get(k)
            .or(args.changes.last())
            .context("--changes")?;
        eprintln!(
            "septa-perf-kube: events and compiles at {n} pods ({} policies) ...",
            args.policies
        );
        let t = timing(&s, &args, changes)?;
        for (name, v, unit) in [
            ("index_bytes_per_pod", m.index.0, "B"),
            ("index_allocs_per_pod", m.index.1, "allocs"),
            ("full_object_bytes_per_pod", m.full.0, "B"),
            ("full_object_allocs_per_pod", m.full.1, "allocs"),
            ("pruned_object_bytes_per_pod", m.pruned.0, "B"),
            ("pruned_object_allocs_per_pod", m.pruned.1, "allocs"),
            ("json_bytes_per_pod", m.json_bytes, "B"),
            ("full_over_index", m.full.0 / m.index.0, "ratio"),
            ("apply_pod_us", t.apply_us, "us"),
            ("decode_apply_pod_us", t.decode_apply_us, "us"),
            ("first_compile_ms", t.first_compile_ms, "ms"),
            ("cluster_ms", t.cluster_ms, "ms"),
            ("compile_ms", t.compile_ms, "ms"),
            ("diff_ms", t.diff_ms, "ms"),
            ("diff_entries", t.diff_entries, "entries"),
            (
                "cluster_compile_over_apply",
                (t.cluster_ms + t.compile_ms) * 1e3 / t.apply_us,
                "ratio",
            ),
        ] {
            let _ = writeln!(csv, "{name},{n},{v:.3},{unit}");
        }
        mem_rows.push((n, m));
        time_rows.push((n, changes, t));
    }

    let mut md = String::from("# The Kubernetes source's index at scale\n\n");
    let _ = writeln!(
        md,
        "Reproduce: `cargo run --release -p perf --bin septa-perf-kube -- --out perf/results` \
         ({} policies, {} events per size). Synthetic Deployment pods (10 replicas per app, 20 \
         apps per namespace, 6 labels, 2 containers with 3 named ports, managed fields, running \
         status with its pod IP), {}; see the binary's module doc.\n",
        args.policies,
        args.events,
        if args.no_services {
            "no Services (--no-services)"
        } else {
            "one Service and EndpointSlice per app"
        }
    );
    let _ = writeln!(
        md,
        "## Memory per pod (heap bytes live, counting allocator)\n\n\
         | pods | index | k8s-openapi objects, full | ratio | as the watcher prunes them | ratio | JSON per pod |\n\
         |---:|---:|---:|---:|---:|---:|---:|"
    );
    for (n, m) in &mem_rows {
        let _ = writeln!(
            md,
            "| {n} | {:.0} B ({:.1} allocs) | {:.0} B ({:.0} allocs) | ×{:.1} | {:.0} B ({:.0} allocs) | ×{:.1} | {:.0} B |",
            m.index.0,
            m.index.1,
            m.full.0,
            m.full.1,
            m.full.0 / m.index.0,
            m.pruned.0,
            m.pruned.1,
            m.pruned.0 / m.index.0,
            m.json_bytes
        );
    }
    let _ = writeln!(
        md,
        "\nBytes as requested from the allocator; malloc adds about 16 B per allocation on top. \
         The objects are counted alone in a Vec (a reflector store adds its map and keys); \
         a k8s-openapi Pod is {} B inline before any of its heap fields, most of it `None`s.\n",
        std::mem::size_of::<Pod>()
    );
    let _ = writeln!(
        md,
        "## Watch events absorbed, and a change's whole load\n\n\
         | pods | identities | policy entries | apply_pod | events/s | decode + apply_pod | events/s | first compile | cluster() | compile | diff (entries) | (cluster() + compile) / apply_pod |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (n, _, t) in &time_rows {
        let _ = writeln!(
            md,
            "| {n} | {} | {} | {:.2} µs | {:.0}k | {:.1} µs | {:.0}k | {:.0} ms | {:.1} ms | {:.0} ms | {:.1} ms ({}) | ×{:.0} |",
            t.identities,
            t.policy_entries,
            t.apply_us,
            1e3 / t.apply_us,
            t.decode_apply_us,
            1e3 / t.decode_apply_us,
            t.first_compile_ms,
            t.cluster_ms,
            t.compile_ms,
            t.diff_ms,
            t.diff_entries,
            (t.cluster_ms + t.compile_ms) * 1e3 / t.apply_us,
        );
    }
    let _ = writeln!(
        md,
        "\nEvents: MODIFIED events that add or remove one label of one pod, {} per size; \
         `decode` is serde_json of the watch event line into a k8s-openapi Pod. cluster(), \
         compile and diff: medians over {} (one label event each), the compiler kept \
         across loads as the agent keeps it.\n",
        args.events,
        time_rows
            .iter()
            .map(|(n, c, _)| format!("{c} changes at {n} pods"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    std::fs::write(args.out.join("kube.md"), &md)?;
    std::fs::write(args.out.join("kube.csv"), &csv)?;
    print!("{md}");
    Ok(())
}
