//! The kernel's clocks as the data path reads them.

/// CLOCK_MONOTONIC in ns: what `bpf_ktime_get_ns` returns and conntrack entries are stamped
/// with.
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
