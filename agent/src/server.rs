//! The agent's Unix socket: registry requests from `septa-cni` (one JSON request per line,
//! forwarded to the main loop) and flow queries from `septa` (answered from the flow tap).
//!
//! Fail mode: only root may use it (the peer's credentials are checked on every connection),
//! it is bound mode 0600 under a temporary name and renamed into place, connections and
//! request sizes are bounded, and accept errors back off instead of spinning.

use std::{os::unix::fs::PermissionsExt, sync::Arc};

use api::protocol::{Request, Response, MAX_LINE};
use dataplane::Error;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::UnixListener,
    sync::{mpsc, oneshot},
};
use tracing::warn;

use crate::{dirs::Dir, flows::tap::FlowTap};

/// A request waiting on the main loop, and where its answer goes.
pub type Job = (Request, oneshot::Sender<Response>);

pub(crate) async fn write_json_line<T: serde::Serialize>(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    v: &T,
) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(v).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out).await
}

/// Connections to the registry socket served at once (flow followers included); more wait in
/// the kernel's backlog.
pub(crate) const MAX_SOCKET_CONNECTIONS: usize = 256;
/// Deadline for a client to send a whole request line, and for an answer to be written.
pub(crate) const SOCKET_IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Accept registry connections on `socket` (mode 0600) and forward requests to the loop. Only
/// root may register endpoints: the peer's credentials are checked on every connection, in case
/// the socket's mode or directory is not what it should be.
pub(crate) async fn serve_socket(listener: UnixListener, tx: mpsc::Sender<Job>, tap: FlowTap) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_SOCKET_CONNECTIONS));
    let mut errors = crate::health::AcceptErrors::new("socket");
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                errors.recovered();
                s
            }
            Err(e) => {
                errors.failed(&e).await;
                continue;
            }
        };
        let tx = tx.clone();
        let tap = tap.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let uid = stream.peer_cred().map(|c| c.uid()).ok();
            let (r, mut w) = stream.into_split();
            if uid != Some(0) {
                warn!(uid = ?uid, "refused a registry connection from a user other than root");
                let mut out = serde_json::to_string(&Response::err(
                    "only root may use the septa agent's socket",
                ))
                .unwrap_or_default();
                out.push('\n');
                let _ = tokio::time::timeout(SOCKET_IO_TIMEOUT, w.write_all(out.as_bytes())).await;
                return;
            }
            let mut lines = BufReader::new(r.take(MAX_LINE as u64 * 16));
            let mut line = String::new();
            loop {
                line.clear();
                match tokio::time::timeout(SOCKET_IO_TIMEOUT, lines.read_line(&mut line)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                    Ok(Ok(_)) => {}
                }
                let resp = if line.len() > MAX_LINE {
                    Response::err(format!("request longer than {MAX_LINE} bytes"))
                } else {
                    match serde_json::from_str::<Request>(&line) {
                        Err(e) => Response::err(format!("malformed request: {e}")),
                        Ok(Request::Flows {
                            filter,
                            last,
                            follow,
                        }) => {
                            tap.serve(&mut w, filter, last, follow).await;
                            return;
                        }
                        Ok(req @ Request::Add(_)) => {
                            // An ADD whose client hung up (a CNI plugin past its deadline) is
                            // dropped: the loop does not register a pod nobody waits for.
                            // (Other requests are answered even to a client that only shut
                            // down its sending side.)
                            let gone_already = hung_up_now(&lines);
                            if gone_already {
                                warn!("ADD dropped: its client hung up before it was queued");
                                metrics::counter!("septa_requests_dropped_total", "op" => "add")
                                    .increment(1);
                                return;
                            }
                            let (otx, mut orx) = oneshot::channel();
                            if tx.send((req, otx)).await.is_err() {
                                return;
                            }
                            tokio::select! {
                                r = &mut orx => r.unwrap_or_else(|_| Response::err("agent shutting down")),
                                gone = hung_up(&mut lines) => {
                                    if gone {
                                        return;
                                    }
                                    orx.await.unwrap_or_else(|_| Response::err("agent shutting down"))
                                }
                            }
                        }
                        Ok(req) => {
                            let (otx, orx) = oneshot::channel();
                            if tx.send((req, otx)).await.is_err() {
                                return;
                            }
                            orx.await
                                .unwrap_or_else(|_| Response::err("agent shutting down"))
                        }
                    }
                };
                let mut out = serde_json::to_string(&resp).unwrap_or_default();
                out.push('\n');
                match tokio::time::timeout(SOCKET_IO_TIMEOUT, w.write_all(out.as_bytes())).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
            }
        });
    }
}

/// Whether the client has hung up already, without waiting: bytes it sent after its request
/// mean it is still there; otherwise the socket is peeked, and end of file means gone. (A
/// poll through tokio would not do: after a short read it waits for a new readiness edge,
/// which an end of file that arrived with the request never gives.)
pub(crate) fn hung_up_now(
    lines: &BufReader<tokio::io::Take<tokio::net::unix::OwnedReadHalf>>,
) -> bool {
    use std::os::fd::AsFd;
    if !lines.buffer().is_empty() {
        return false;
    }
    let stream: &tokio::net::UnixStream = lines.get_ref().get_ref().as_ref();
    let mut b = [0u8; 1];
    matches!(
        rustix::net::recv(
            stream.as_fd(),
            &mut b[..],
            rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT
        ),
        Ok((_, 0))
    )
}

/// Whether the client hung up: its side is at end of file (or failed). Data it sent after its
/// request (pipelining) means it is still there; nothing is consumed.
pub(crate) async fn hung_up<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> bool {
    r.fill_buf().await.map_or(true, |b| b.is_empty())
}

/// Bind the registry socket: under a temporary name, made mode 0600, then renamed over `name`,
/// so the socket path never exists with looser permissions and a stale socket is replaced
/// atomically. Returns the listener and the socket file's identity (device, inode).
pub(crate) fn bind_socket(
    dir: &Dir,
    name: &str,
) -> Result<(UnixListener, Option<(u64, u64)>), Error> {
    let tmp = format!(".{name}.new");
    let named = |e: std::io::Error| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("socket {}: {e}", dir.join(name).display()),
        ))
    };
    dir.remove(&tmp).map_err(named)?;
    let listener = std::os::unix::net::UnixListener::bind(dir.join(&tmp)).map_err(named)?;
    std::fs::set_permissions(dir.join(&tmp), std::fs::Permissions::from_mode(0o600))
        .and_then(|_| dir.rename(&tmp, name))
        .and_then(|_| listener.set_nonblocking(true))
        .map_err(named)?;
    let bound = dir.identity(name);
    Ok((UnixListener::from_std(listener).map_err(named)?, bound))
}
