//! Real sockets inside pod namespaces: servers that record what they receive, and clients.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use hostnet::netns::in_netns;

/// How long a probe waits for an answer before calling the path closed. A wait, not a
/// threshold: tests also observe the kernel's DENY events to know a drop happened.
pub const PROBE_WAIT: Duration = Duration::from_secs(2);

/// A TCP echo server and a UDP sink, each counting bytes received, in a pod's namespace.
pub struct Server {
    pub received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Listen on every TCP port in `tcp` and UDP port in `udp`, on all addresses (v4 and v6).
    pub fn start(netns: &Path, tcp: &[u16], udp: &[u16]) -> Result<Self> {
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &port in tcp {
            let l = in_netns(netns, || TcpListener::bind(("::", port)))??;
            l.set_nonblocking(true)?;
            let (rx, stop) = (received.clone(), stop.clone());
            threads.push(std::thread::spawn(move || tcp_echo(l, rx, stop)));
        }
        for &port in udp {
            let s = in_netns(netns, || UdpSocket::bind(("::", port)))??;
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            let (rx, stop) = (received.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = s.recv(&mut buf) {
                        rx.fetch_add(n as u64, Ordering::SeqCst);
                    }
                }
            }));
        }
        Ok(Self {
            received,
            stop,
            threads,
        })
    }

    /// Bytes received so far over all sockets.
    pub fn bytes(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn tcp_echo(l: TcpListener, rx: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let mut conns: Vec<TcpStream> = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((s, _)) = l.accept() {
            let _ = s.set_nonblocking(true);
            conns.push(s);
        }
        conns.retain_mut(|c| match c.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                rx.fetch_add(n as u64, Ordering::SeqCst);
                c.write_all(&buf[..n]).is_ok()
            }
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        });
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Open a TCP connection from inside `netns`; `Err` if it does not connect within [`PROBE_WAIT`].
pub fn tcp_connect(netns: &Path, to: SocketAddr) -> Result<TcpStream> {
    let s = in_netns(netns, || TcpStream::connect_timeout(&to, PROBE_WAIT))?
        .with_context(|| format!("connect to {to}"))?;
    s.set_read_timeout(Some(PROBE_WAIT))?;
    Ok(s)
}

/// Like [`tcp_connect`], from the local address `from` (one of the namespace's own).
pub fn tcp_connect_from(netns: &Path, from: std::net::IpAddr, to: SocketAddr) -> Result<TcpStream> {
    let s = in_netns(netns, || -> std::io::Result<TcpStream> {
        let domain = socket2::Domain::for_address(to);
        let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
        sock.bind(&SocketAddr::new(from, 0).into())?;
        sock.connect_timeout(&to.into(), PROBE_WAIT)?;
        Ok(sock.into())
    })?
    .with_context(|| format!("connect from {from} to {to}"))?;
    s.set_read_timeout(Some(PROBE_WAIT))?;
    Ok(s)
}

/// Send `msg` and wait for the echo; `Err` if it does not come back within [`PROBE_WAIT`].
pub fn echo(s: &mut TcpStream, msg: &[u8]) -> Result<()> {
    s.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).context("echo")?;
    anyhow::ensure!(got == msg, "echo mismatch");
    Ok(())
}

/// Send one UDP datagram from inside `netns`.
pub fn udp_send(netns: &Path, to: SocketAddr, msg: &[u8]) -> Result<()> {
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let s = in_netns(netns, || UdpSocket::bind(bind))??;
    s.send_to(msg, to)?;
    Ok(())
}

/// Poll `f` until it returns `Some` or `deadline` passes.
pub fn poll_until<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `/run/netns/<name>`.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}
