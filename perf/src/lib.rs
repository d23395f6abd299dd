//! Helpers shared by the benchmark binaries: order statistics, process memory, the kernel
//! release, the gnuplot line plot the ns/packet figures use, and synthetic Kubernetes objects
//! ([`kube`]).

pub mod kube;

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context, Result};

/// The median (upper median for even counts).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The `p` quantile (0..=1), nearest rank.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// A `/proc/<pid>/status` memory field (`VmRSS`, `VmHWM`, ...) in MiB; `pid` `None` is this
/// process. 0 when unreadable.
pub fn status_mib(pid: Option<u32>, field: &str) -> f64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_owned(),
    };
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// The running kernel's release.
pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// ns/packet against map size: writes `<stem>.dat` (one row per size, 0 drawn at 1 on the
/// log axis; one column per series), `<stem>.gp` and renders `<stem>.png` with gnuplot.
pub fn plot_ns_per_packet(
    out: &Path,
    stem: &str,
    title: &str,
    xlabel: &str,
    series: &[&str],
    rows: &[(u64, Vec<f64>)],
) -> Result<()> {
    let mut dat = format!("entries {}\n", series.join(" "));
    for (size, values) in rows {
        let _ = write!(dat, "{}", (*size).max(1));
        for v in values {
            let _ = write!(dat, " {v:.1}");
        }
        dat.push('\n');
    }
    let data = out.join(format!("{stem}.dat"));
    std::fs::write(&data, dat)?;
    let png = out.join(format!("{stem}.png"));
    let script = format!(
        "set terminal pngcairo size 900,520\nset output '{}'\n\
         set title '{title}' noenhanced\n\
         set xlabel '{xlabel}'\nset ylabel 'ns/packet'\n\
         set key left top\nset grid\nset logscale x\nset yrange [0:*]\n\
         plot for [i=2:{}] '{}' using 1:i with linespoints lw 2 title columnheader(i)\n",
        png.display(),
        series.len() + 1,
        data.display()
    );
    let gp = out.join(format!("{stem}.gp"));
    std::fs::write(&gp, &script)?;
    let st = Command::new("gnuplot")
        .arg(&gp)
        .status()
        .context("running gnuplot")?;
    anyhow::ensure!(st.success(), "gnuplot failed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_statistics() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        let mut v = vec![5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&mut v, 0.0), 1.0);
        assert_eq!(percentile(&mut v, 1.0), 5.0);
        assert!(status_mib(None, "VmRSS") > 0.0);
        assert_eq!(status_mib(None, "NoSuchField"), 0.0);
    }
}
