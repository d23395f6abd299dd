//! `GET /healthz` (the process is up), `GET /readyz` (the first reconciliation is done and
//! the manifests are valid; a 503 answer says why not, in words) and `GET /metrics` (Prometheus text format). A minimal HTTP/1.0
//! responder: fixed routes, no request bodies.
//!
//! Fail mode: any local user can connect, so the listener is bounded without letting idle
//! connections lock others out: it accepts at once (a full kernel backlog would turn new
//! clients away), and when [`MAX_WAITING`] connections are waiting for their request line the
//! oldest of them is closed. A real client sends its request as soon as it connects, so it is
//! never the oldest; a client that only holds connections loses them. Each request and
//! answer has a deadline ([`IO_TIMEOUT`]). Accept errors (EMFILE above all) back off instead
//! of spinning; see [`accept_backoff`].

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    task::AbortHandle,
};

/// Connections waiting for their request line at once; a new one closes the oldest beyond.
pub const MAX_WAITING: usize = 32;
/// Deadline for a client to send its request line, and for the answer to be written.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections that have not sent their request yet, oldest first (by serial number).
type Waiting = Arc<Mutex<VecDeque<(u64, AbortHandle)>>>;

/// What `/readyz` and the socket's status answer report: whether the first reconciliation is
/// done, and what is wrong with the inputs meanwhile.
#[derive(Debug, Default)]
pub struct Readiness {
    reconciled: AtomicBool,
    problem: Mutex<Option<String>>,
}

impl Readiness {
    /// The maps hold a good state.
    pub fn set_reconciled(&self) {
        self.reconciled.store(true, Ordering::Relaxed);
    }

    /// Whether the maps hold a good state (whatever the inputs say now).
    pub fn reconciled(&self) -> bool {
        self.reconciled.load(Ordering::Relaxed)
    }

    /// What is wrong with the inputs (`None`: nothing).
    pub fn set_problem(&self, problem: Option<String>) {
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    /// What is wrong with the inputs, if anything.
    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `Ok` when ready: reconciled, and the inputs are as applied; else why not.
    pub fn check(&self) -> Result<(), String> {
        match (self.reconciled(), self.problem()) {
            (true, None) => Ok(()),
            (_, Some(p)) => Err(p),
            (false, None) => Err("the first reconciliation is not done yet".into()),
        }
    }
}

/// Serve health (and `/metrics` when a handle is given) on `listener` until the task ends.
pub async fn serve(
    listener: TcpListener,
    ready: Arc<Readiness>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) {
    let waiting: Waiting = Default::default();
    let mut errors = AcceptErrors::new("health");
    for serial in 0u64.. {
        let mut s = match listener.accept().await {
            Ok((s, _)) => {
                errors.recovered();
                s
            }
            Err(e) => {
                errors.failed(&e).await;
                continue;
            }
        };
        let ready = ready.clone();
        let metrics = metrics.clone();
        let w = waiting.clone();
        let task = async move {
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(IO_TIMEOUT, s.read(&mut buf)).await;
            w.lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|(n, _)| *n != serial);
            let n = match read {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let line = String::from_utf8_lossy(&buf[..n]);
            let rendered;
            let why;
            let (code, body) = if line.starts_with("GET /metrics") && metrics.is_some() {
                rendered = metrics.as_ref().map(|m| m.render()).unwrap_or_default();
                (200, rendered.as_str())
            } else if line.starts_with("GET /healthz") {
                (200, "ok\n")
            } else if line.starts_with("GET /readyz") {
                match ready.check() {
                    Ok(()) => (200, "ready\n"),
                    Err(e) => {
                        why = format!("not ready: {e}\n");
                        (503, why.as_str())
                    }
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
            let _ = tokio::time::timeout(IO_TIMEOUT, s.write_all(resp.as_bytes())).await;
        };
        let evicted = {
            // Registered before the task can run, so it is never missing when it removes itself.
            let mut queue = waiting.lock().unwrap_or_else(|p| p.into_inner());
            queue.push_back((serial, tokio::spawn(task).abort_handle()));
            let mut evicted = false;
            while queue.len() > MAX_WAITING {
                if let Some((_, oldest)) = queue.pop_front() {
                    // Aborting drops the task's socket: the connection is closed.
                    oldest.abort();
                    evicted = true;
                    metrics::counter!("septa_health_connections_evicted_total").increment(1);
                }
            }
            evicted
        };
        if evicted {
            // Let the runtime drop the aborted task (and close its socket) before the next
            // accept: under a flood the sockets held stay near the bound, not the backlog.
            tokio::task::yield_now().await;
        }
    }
}

/// How long an accept loop pauses after an error: long enough that a listener out of file
/// descriptors does not spin, short enough that service resumes as soon as one is freed.
pub fn accept_backoff() -> Duration {
    Duration::from_millis(100)
}

/// An accept loop's errors: logged once per burst (not once per retry), with EMFILE and
/// ENFILE named as what they are, then a pause.
pub struct AcceptErrors {
    listener: &'static str,
    in_burst: bool,
}

impl AcceptErrors {
    pub fn new(listener: &'static str) -> Self {
        Self {
            listener,
            in_burst: false,
        }
    }

    /// Record an error and wait [`accept_backoff`].
    pub async fn failed(&mut self, e: &std::io::Error) {
        metrics::counter!("septa_accept_errors_total", "listener" => self.listener).increment(1);
        if !self.in_burst {
            self.in_burst = true;
            match e.raw_os_error() {
                Some(libc::EMFILE) => tracing::error!(
                    listener = self.listener,
                    "out of file descriptors (EMFILE): the agent's RLIMIT_NOFILE is reached; pausing accepts until some are freed"
                ),
                Some(libc::ENFILE) => tracing::error!(
                    listener = self.listener,
                    "the system is out of file descriptors (ENFILE); pausing accepts"
                ),
                _ => tracing::warn!(listener = self.listener, error = %e, "accept failed; pausing accepts"),
            }
        }
        tokio::time::sleep(accept_backoff()).await;
    }

    /// An accept succeeded: the next error starts a new burst.
    pub fn recovered(&mut self) {
        if self.in_burst {
            self.in_burst = false;
            tracing::info!(listener = self.listener, "accepting again");
        }
    }
}

/// Raise the soft limit on open files to the hard limit: the agent holds a descriptor per
/// pinned link and connection, and the default soft limit (1024) is far below what a busy
/// node needs. Returns the limit now in force.
pub fn raise_nofile_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let raised = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE to its hard limit");
            return lim.current;
        }
    }
    getrlimit(Resource::Nofile).current
}
