//! A real IPFIX collector for tests: `nfcapd` (Debian nfdump) on a loopback port, optionally
//! inside a network namespace, read back with `nfdump`.

use std::{
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use super::traffic::poll_until;

/// A running nfcapd.
pub struct Collector {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    netns: Option<PathBuf>,
}

/// The receive queue of the UDP socket on `port`, in the calling thread's namespace.
fn rx_queue_here(port: u16) -> Option<u64> {
    let hex = format!(":{port:04X}");
    let t = std::fs::read_to_string("/proc/thread-self/net/udp").ok()?;
    let line = t.lines().find(|l| {
        l.split_whitespace()
            .nth(1)
            .is_some_and(|a| a.ends_with(&hex))
    })?;
    u64::from_str_radix(line.split_whitespace().nth(4)?.split(':').nth(1)?, 16).ok()
}

impl Collector {
    /// Start nfcapd on 127.0.0.1:`port`, writing to `dir`, in `netns` (or here); waits until
    /// it listens.
    pub fn start(dir: &Path, port: u16, netns: Option<&Path>) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut cmd = Command::new("nfcapd");
        cmd.args([
            "-w",
            &dir.display().to_string(),
            "-p",
            &port.to_string(),
            "-b",
            "127.0.0.1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let ns = netns.map(std::fs::File::open).transpose()?;
        if let Some(f) = &ns {
            let fd = f.as_raw_fd();
            // SAFETY: setns is async-signal-safe; the fd stays open until after spawn.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = cmd
            .spawn()
            .context("starting nfcapd (apt package nfdump)")?;
        let c = Collector {
            child: Some(child),
            dir: dir.to_owned(),
            port,
            netns: netns.map(Path::to_owned),
        };
        if poll_until(Duration::from_secs(10), || c.rx_queue()).is_none() {
            bail!("nfcapd does not listen on 127.0.0.1:{port}");
        }
        Ok(c)
    }

    fn rx_queue(&self) -> Option<u64> {
        let port = self.port;
        match &self.netns {
            Some(ns) => hostnet::netns::in_netns(ns, || rx_queue_here(port))
                .ok()
                .flatten(),
            None => rx_queue_here(port),
        }
    }

    /// Wait until nfcapd has read every datagram, stop it (it writes its file), and read the
    /// flows back with `nfdump -o fmt:<fmt>`: one row of `|`-separated fields per flow.
    pub fn stop_and_read(mut self, fmt: &str) -> Result<Vec<Vec<String>>> {
        if poll_until(Duration::from_secs(10), || {
            (self.rx_queue() == Some(0)).then_some(())
        })
        .is_none()
        {
            bail!("nfcapd did not drain its socket");
        }
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            c.wait()?;
        }
        let out = Command::new("nfdump")
            .args([
                "-R",
                &self.dir.display().to_string(),
                "-q",
                "-o",
                &format!("fmt:{fmt}"),
            ])
            .output()?;
        if !out.status.success() {
            bail!("nfdump: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('|').map(|f| f.trim().to_owned()).collect())
            .collect())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
