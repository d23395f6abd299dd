//! `GET /healthz` (the process is up), `GET /readyz` (the first reconciliation is done and
//! the manifests are valid) and `GET /metrics` (Prometheus text format). A minimal HTTP/1.0
//! responder: fixed routes, no request bodies.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// Serve health (and `/metrics` when a handle is given) on `listener` until the task ends.
pub async fn serve(
    listener: TcpListener,
    ready: Arc<AtomicBool>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let ready = ready.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(std::time::Duration::from_secs(2), s.read(&mut buf))
                .await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let line = String::from_utf8_lossy(&buf[..n]);
            let rendered;
            let (code, body) = if line.starts_with("GET /metrics") && metrics.is_some() {
                rendered = metrics.as_ref().map(|m| m.render()).unwrap_or_default();
                (200, rendered.as_str())
            } else if line.starts_with("GET /healthz") {
                (200, "ok\n")
            } else if line.starts_with("GET /readyz") {
                if ready.load(Ordering::Relaxed) {
                    (200, "ready\n")
                } else {
                    (503, "not ready\n")
                }
            } else {
                (404, "not found\n")
            };
            let reason = match code {
                200 => "OK",
                503 => "Service Unavailable",
                _ => "Not Found",
            };
            let resp = format!("HTTP/1.0 {code} {reason}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}
