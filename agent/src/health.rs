//! `GET /healthz` (the process is up), `GET /readyz` (the first reconciliation is done and
//! the manifests are valid; a 503 answer says why not, in words) and `GET /metrics`
//! (Prometheus text format), served over HTTP/1 by hyper. The paths are exact (anything else
//! is 404), `GET` and `HEAD` are the only methods (405 otherwise), requests carry no body, and
//! a request hyper cannot parse is answered 400. A kept-alive connection may ask again.
//!
//! Fail mode: any local user can connect, so the listener is bounded without letting idle
//! connections lock others out: it accepts at once (a full kernel backlog would turn new
//! clients away), and when [`MAX_WAITING`] connections are waiting for a request (their first,
//! or the next one on a kept-alive connection) the oldest of them is closed. A real client
//! sends its request as soon as it connects, so it is never the oldest; a client that only
//! holds connections loses them. Each request and answer has a deadline ([`IO_TIMEOUT`]):
//! a request head not received in time closes the connection, and so does an answer the client
//! does not read in time. Accept errors (EMFILE above all) back off instead of spinning; see
//! [`accept_backoff`].

use std::{
    collections::VecDeque,
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    body::{Body, Bytes, Incoming},
    header::{self, HeaderMap, HeaderValue},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode, Version,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Notify,
    time::{Instant, Sleep},
};

/// Connections waiting for a request at once; a new one closes the oldest beyond.
pub const MAX_WAITING: usize = 32;
/// Deadline for a client to send a request head, and for the answer to be written.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes of a request head held in memory (hyper's minimum): a longer head is refused.
const MAX_REQUEST_HEAD: usize = 8192;
/// What Prometheus expects of its text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// What `/readyz` and the socket's status answer report: whether the first reconciliation is
/// done, and what is wrong with the inputs meanwhile.
#[derive(Debug, Default)]
pub struct Readiness {
    reconciled: AtomicBool,
    problem: Mutex<Option<String>>,
    /// Why septa's CNI entry is not in place, when the agent manages it.
    cni: Mutex<Option<String>>,
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

    /// Why septa's CNI entry is not in place (`None`: it is, or the agent does not manage
    /// it). Only `/readyz` reports it: the node enforces, but new pods would not run
    /// septa-cni, which a rollout must not take for ready.
    pub fn set_cni_problem(&self, problem: Option<String>) {
        *self.cni.lock().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    /// `Ok` when ready: reconciled, the inputs are as applied, and the CNI entry (when the
    /// agent manages it) is in place; else why not.
    pub fn check(&self) -> Result<(), String> {
        let cni = self.cni.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match (self.reconciled(), self.problem(), cni) {
            (true, None, None) => Ok(()),
            (_, Some(p), _) => Err(p),
            (false, None, _) => Err("the first reconciliation is not done yet".into()),
            (true, None, Some(c)) => Err(format!("septa's CNI entry is not in place: {c}")),
        }
    }
}

/// Serve health (and `/metrics` when a handle is given) on `listener` until the task ends.
pub async fn serve(
    listener: TcpListener,
    ready: Arc<Readiness>,
    metrics: Option<PrometheusHandle>,
) {
    serve_with(listener, ready, metrics, Limits::AGENT).await
}

/// The bounds [`serve`] keeps; tests choose others so that what they check does not race
/// a deadline.
#[derive(Clone, Copy, Debug)]
struct Limits {
    waiting: usize,
    io_timeout: Duration,
}

impl Limits {
    const AGENT: Limits = Limits {
        waiting: MAX_WAITING,
        io_timeout: IO_TIMEOUT,
    };
}

async fn serve_with(
    listener: TcpListener,
    ready: Arc<Readiness>,
    metrics: Option<PrometheusHandle>,
    limits: Limits,
) {
    let routes = Arc::new(Routes { ready, metrics });
    let waiting = Arc::new(Waiting::new(limits.waiting));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.io_timeout)
        .max_buf_size(MAX_REQUEST_HEAD);
    let mut errors = AcceptErrors::new("health");
    loop {
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
        let conn = Arc::new(Conn::new(limits.io_timeout));
        // Queued before its task can run, so that a request that arrives at once finds it.
        let evicted = waiting.wait(&conn);
        tokio::spawn(serve_connection(
            http.clone(),
            stream,
            conn,
            waiting.clone(),
            routes.clone(),
        ));
        if evicted {
            // Let the runtime drop the evicted connections (closing their sockets) before the
            // next accept: under a flood the sockets held stay near the bound, not the backlog.
            tokio::task::yield_now().await;
        }
    }
}

/// Serve one connection until the client closes it, a deadline passes, hyper refuses a
/// request, or the connection is evicted from the waiting queue.
async fn serve_connection(
    http: http1::Builder,
    stream: TcpStream,
    conn: Arc<Conn>,
    waiting: Arc<Waiting>,
    routes: Arc<Routes>,
) {
    let _leave = Leave {
        waiting: &waiting,
        conn: &conn,
    };
    let io = TokioIo::new(Deadline::new(stream, conn.clone()));
    let service = service_fn(|req: Request<Incoming>| {
        waiting.leave(&conn);
        conn.arm();
        let answer = routes.answer(&req);
        if keeps_alive(&req, &answer) {
            waiting.wait(&conn);
        }
        std::future::ready(Ok::<_, Infallible>(answer))
    });
    tokio::select! {
        () = conn.evicted.notified() => {}
        served = http.serve_connection(io, service) => {
            if let Err(e) = served {
                tracing::debug!(error = %e, "health connection closed");
            }
        }
    }
}

/// What the listener answers.
struct Routes {
    ready: Arc<Readiness>,
    metrics: Option<PrometheusHandle>,
}

impl Routes {
    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.version() == Version::HTTP_11 && !req.headers().contains_key(header::HOST) {
            // RFC 9112 section 3.2: an HTTP/1.1 request without Host is answered 400.
            return closing(text(
                StatusCode::BAD_REQUEST,
                "an HTTP/1.1 request needs a Host header\n",
            ));
        }
        if !req.body().is_end_stream() {
            // Closing spares reading a body nobody wants.
            return closing(text(
                StatusCode::BAD_REQUEST,
                "request bodies are not accepted\n",
            ));
        }
        let path = req.uri().path();
        let metrics = match (path, &self.metrics) {
            ("/healthz" | "/readyz", _) => None,
            ("/metrics", Some(m)) => Some(m),
            _ => return text(StatusCode::NOT_FOUND, "not found\n"),
        };
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        if let Some(m) = metrics {
            let mut r = Response::new(Full::new(Bytes::from(m.render())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(PROMETHEUS_TEXT),
            );
            return r;
        }
        if path == "/healthz" {
            return text(StatusCode::OK, "ok\n");
        }
        match self.ready.check() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
        }
    }
}

/// A plain-text answer (hyper adds its length, and leaves the body out for `HEAD`).
fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// `answer`, with the connection closed after it.
fn closing(mut answer: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    answer
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    answer
}

/// Whether the connection stays open for another request after `answer` (HTTP/1.1 unless
/// either side says `close`; HTTP/1.0 only when the client asks for `keep-alive`).
fn keeps_alive(req: &Request<Incoming>, answer: &Response<Full<Bytes>>) -> bool {
    let says = |headers: &HeaderMap, token: &str| {
        headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if says(answer.headers(), "close") {
        return false;
    }
    match req.version() {
        Version::HTTP_11 => !says(req.headers(), "close"),
        Version::HTTP_10 => says(req.headers(), "keep-alive"),
        _ => false,
    }
}

/// One accepted connection, as the waiting queue and its own task share it.
struct Conn {
    /// Notified when the queue closes the connection: its task then drops it. A notification
    /// sent before the task waits for it is kept for it.
    evicted: Notify,
    /// When the answer being written must be done by.
    answer_by: Mutex<Option<Instant>>,
    io_timeout: Duration,
}

impl Conn {
    fn new(io_timeout: Duration) -> Self {
        Self {
            evicted: Notify::new(),
            answer_by: Mutex::new(None),
            io_timeout,
        }
    }

    /// A request has arrived: its answer is due within the deadline.
    fn arm(&self) {
        *lock(&self.answer_by) = Some(Instant::now() + self.io_timeout);
    }

    /// When the answer being written is due: for an answer hyper writes on its own (a
    /// request it could not parse), from the first write that has to wait.
    fn answer_by(&self) -> Instant {
        *lock(&self.answer_by).get_or_insert_with(|| Instant::now() + self.io_timeout)
    }
}

/// Connections waiting for a request, oldest first.
struct Waiting {
    limit: usize,
    queue: Mutex<VecDeque<Arc<Conn>>>,
}

impl Waiting {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            queue: Mutex::new(VecDeque::new()),
        }
    }

    /// `conn` now waits for a request, as the newest; the oldest beyond the limit are closed.
    /// Returns whether any was.
    fn wait(&self, conn: &Arc<Conn>) -> bool {
        let mut queue = lock(&self.queue);
        queue.retain(|c| !Arc::ptr_eq(c, conn));
        queue.push_back(conn.clone());
        let mut evicted = false;
        while queue.len() > self.limit {
            if let Some(oldest) = queue.pop_front() {
                oldest.evicted.notify_one();
                evicted = true;
                metrics::counter!("septa_health_connections_evicted_total").increment(1);
            }
        }
        evicted
    }

    /// `conn` no longer waits (its request arrived, or it is closed).
    fn leave(&self, conn: &Arc<Conn>) {
        lock(&self.queue).retain(|c| !Arc::ptr_eq(c, conn));
    }
}

/// Takes a connection out of the waiting queue however its task ends.
struct Leave<'a> {
    waiting: &'a Waiting,
    conn: &'a Arc<Conn>,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.waiting.leave(self.conn);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection whose writes fail once the answer is overdue, so that a client that stops
/// reading cannot hold it open.
struct Deadline<S> {
    io: S,
    conn: Arc<Conn>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> Deadline<S> {
    fn new(io: S, conn: Arc<Conn>) -> Self {
        Self {
            io,
            conn,
            timer: None,
        }
    }

    /// A write has to wait: ready with an error once the answer is overdue.
    fn poll_overdue(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let by = self.conn.answer_by();
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(by)));
        if timer.deadline() != by {
            timer.as_mut().reset(by);
        }
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not read the answer in time",
        ))
    }

    fn overdue_if_pending<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => self.poll_overdue(cx).map(Err),
            done => done,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.overdue_if_pending(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.overdue_if_pending(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.overdue_if_pending(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.overdue_if_pending(cx, polled)
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
    /// Errors of the accept loop of `listener` (the label of `septa_accept_errors_total`).
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use metrics_exporter_prometheus::PrometheusBuilder;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    use super::*;

    async fn start(
        ready: Arc<Readiness>,
        metrics: Option<PrometheusHandle>,
        limits: Limits,
    ) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_with(listener, ready, metrics, limits));
        addr
    }

    async fn start_default() -> SocketAddr {
        start(Arc::default(), None, Limits::AGENT).await
    }

    /// Everything the server sends on a new connection after `request`, until it closes.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        exchange(addr, format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await
    }

    fn status(answer: &str) -> &str {
        answer.lines().next().unwrap_or_default()
    }

    fn body(answer: &str) -> &str {
        answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
        answer
            .split("\r\n\r\n")
            .next()?
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    /// One answer read from a kept-alive connection: its head, then as many body bytes as
    /// its content-length says.
    async fn read_answer(r: &mut BufReader<TcpStream>) -> String {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            assert_ne!(r.read_line(&mut line).await.unwrap(), 0, "closed: {head}");
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let len: usize = header(&format!("{head}\r\n"), "content-length")
            .expect("a content-length")
            .parse()
            .unwrap();
        let mut body = vec![0; len];
        r.read_exact(&mut body).await.unwrap();
        head + &String::from_utf8(body).unwrap()
    }

    fn metric(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[tokio::test]
    async fn the_three_routes_answer() {
        let ready = Arc::new(Readiness::default());
        let recorder = PrometheusBuilder::new().build_recorder();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("septa_test_total").increment(3)
        });
        let addr = start(ready.clone(), Some(recorder.handle()), Limits::AGENT).await;

        let h = get(addr, "/healthz").await;
        assert_eq!(status(&h), "HTTP/1.0 200 OK", "{h}");
        assert_eq!(body(&h), "ok\n");

        let r = get(addr, "/readyz").await;
        assert_eq!(status(&r), "HTTP/1.0 503 Service Unavailable", "{r}");
        assert_eq!(
            body(&r),
            "not ready: the first reconciliation is not done yet\n"
        );
        ready.set_reconciled();
        ready.set_problem(Some("10-policy.yaml: no such selector".into()));
        let r = get(addr, "/readyz").await;
        assert_eq!(
            body(&r),
            "not ready: 10-policy.yaml: no such selector\n",
            "{r}"
        );
        ready.set_problem(None);
        let r = get(addr, "/readyz").await;
        assert_eq!(status(&r), "HTTP/1.0 200 OK", "{r}");
        assert_eq!(body(&r), "ready\n");

        let m = get(addr, "/metrics").await;
        assert_eq!(status(&m), "HTTP/1.0 200 OK", "{m}");
        assert_eq!(header(&m, "content-type"), Some(PROMETHEUS_TEXT));
        assert_eq!(metric(body(&m), "septa_test_total"), Some(3.0), "{m}");
    }

    #[tokio::test]
    async fn paths_match_exactly() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let addr = start(Arc::default(), Some(recorder.handle()), Limits::AGENT).await;
        for path in [
            "/metricsXYZ",
            "/healthzfoo",
            "/readyz/",
            "/healthz/x",
            "/",
            "/HEALTHZ",
        ] {
            let a = get(addr, path).await;
            assert_eq!(status(&a), "HTTP/1.0 404 Not Found", "{path}: {a}");
        }
        // A query does not change the path.
        let a = get(addr, "/healthz?verbose").await;
        assert_eq!(status(&a), "HTTP/1.0 200 OK", "{a}");
    }

    #[tokio::test]
    async fn metrics_without_a_handle_is_not_found() {
        let addr = start_default().await;
        let a = get(addr, "/metrics").await;
        assert_eq!(status(&a), "HTTP/1.0 404 Not Found", "{a}");
    }

    #[tokio::test]
    async fn methods_other_than_get_and_head_are_refused() {
        let addr = start_default().await;
        for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
            let a = exchange(
                addr,
                format!("{method} /healthz HTTP/1.0\r\n\r\n").as_bytes(),
            )
            .await;
            assert_eq!(
                status(&a),
                "HTTP/1.0 405 Method Not Allowed",
                "{method}: {a}"
            );
            assert_eq!(header(&a, "allow"), Some("GET, HEAD"), "{a}");
        }
    }

    #[tokio::test]
    async fn head_answers_the_head_without_the_body() {
        let addr = start_default().await;
        let a = exchange(addr, b"HEAD /readyz HTTP/1.0\r\n\r\n").await;
        assert_eq!(status(&a), "HTTP/1.0 503 Service Unavailable", "{a}");
        let expected = "not ready: the first reconciliation is not done yet\n".len();
        assert_eq!(
            header(&a, "content-length"),
            Some(expected.to_string().as_str()),
            "{a}"
        );
        assert!(a.ends_with("\r\n\r\n"), "no body: {a:?}");
    }

    #[tokio::test]
    async fn a_malformed_request_is_refused_and_the_next_client_served() {
        let addr = start_default().await;
        for junk in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET /healthz\r\n\r\n",
            b"\x00\x01\x02\x03 / HTTP/1.1\r\n\r\n",
            b"GET /healthz HTTP/9.9\r\n\r\n",
        ] {
            let a = exchange(addr, junk).await;
            assert!(
                status(&a).ends_with(" 400 Bad Request"),
                "{:?}: {a}",
                String::from_utf8_lossy(junk)
            );
            let h = get(addr, "/healthz").await;
            assert_eq!(status(&h), "HTTP/1.0 200 OK", "{h}");
        }
    }

    #[tokio::test]
    async fn request_bodies_are_refused() {
        let addr = start_default().await;
        let a = exchange(
            addr,
            b"GET /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello",
        )
        .await;
        assert_eq!(status(&a), "HTTP/1.1 400 Bad Request", "{a}");
        assert_eq!(body(&a), "request bodies are not accepted\n");
        let a = exchange(
            addr,
            b"GET /healthz HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(status(&a), "HTTP/1.1 400 Bad Request", "{a}");
    }

    #[tokio::test]
    async fn http11_without_host_is_refused() {
        let addr = start_default().await;
        let a = exchange(addr, b"GET /healthz HTTP/1.1\r\nconnection: close\r\n\r\n").await;
        assert_eq!(status(&a), "HTTP/1.1 400 Bad Request", "{a}");
    }

    #[tokio::test]
    async fn a_kept_alive_connection_serves_several_requests() {
        let addr = start_default().await;
        let mut s = BufReader::new(TcpStream::connect(addr).await.unwrap());
        for path in ["/healthz", "/readyz", "/nope", "/healthz"] {
            s.get_mut()
                .write_all(format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let a = read_answer(&mut s).await;
            let expected = match path {
                "/healthz" => "HTTP/1.1 200 OK",
                "/readyz" => "HTTP/1.1 503 Service Unavailable",
                _ => "HTTP/1.1 404 Not Found",
            };
            assert_eq!(status(&a), expected, "{a}");
        }
        // HTTP/1.0 keeps the connection when asked to.
        let mut s = BufReader::new(TcpStream::connect(addr).await.unwrap());
        for _ in 0..2 {
            s.get_mut()
                .write_all(b"GET /healthz HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
                .await
                .unwrap();
            let a = read_answer(&mut s).await;
            assert_eq!(body(&a), "ok\n", "{a}");
        }
    }

    #[tokio::test]
    async fn idle_connections_do_not_lock_a_client_out() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // The listener runs on this thread (a current-thread runtime): its counters land here.
        let _local = metrics::set_default_local_recorder(&recorder);
        // A deadline no test run reaches: the idle connections leave by eviction only.
        let limits = Limits {
            waiting: 4,
            io_timeout: Duration::from_secs(3600),
        };
        let addr = start(Arc::default(), None, limits).await;
        let mut idle = Vec::new();
        for _ in 0..12 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let a = get(addr, "/healthz").await;
        assert_eq!(status(&a), "HTTP/1.0 200 OK", "{a}");
        // Accepted in order, the client last: all but the newest 4 of the 13 were closed.
        assert_eq!(
            metric(&handle.render(), "septa_health_connections_evicted_total"),
            Some(9.0)
        );
        let mut kept = idle.split_off(9);
        for mut s in idle {
            let mut buf = [0; 1];
            assert_eq!(
                s.read(&mut buf).await.unwrap(),
                0,
                "an evicted one is closed"
            );
        }
        for s in &mut kept {
            s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert_eq!(
                status(&out),
                "HTTP/1.0 200 OK",
                "a newer one is served: {out}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_nothing_is_closed_at_the_deadline() {
        let addr = start_default().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let t0 = Instant::now();
        let mut buf = [0; 64];
        assert_eq!(s.read(&mut buf).await.unwrap(), 0);
        let waited = t0.elapsed();
        assert!(
            (IO_TIMEOUT..2 * IO_TIMEOUT).contains(&waited),
            "closed after {waited:?}"
        );
        // So is a kept-alive connection that asks nothing more.
        let mut s = BufReader::new(TcpStream::connect(addr).await.unwrap());
        s.get_mut()
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        read_answer(&mut s).await;
        let t0 = Instant::now();
        assert_eq!(s.read(&mut buf).await.unwrap(), 0);
        let waited = t0.elapsed();
        assert!(
            (IO_TIMEOUT..2 * IO_TIMEOUT).contains(&waited),
            "closed after {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_the_client_does_not_read_fails_at_the_deadline() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let conn = Arc::new(Conn::new(IO_TIMEOUT));
        conn.arm();
        let t0 = Instant::now();
        let mut io = Deadline::new(ours, conn.clone());
        let e = io.write_all(&[b'x'; 4096]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t0.elapsed(), IO_TIMEOUT);
        // A new request gives its answer a new deadline.
        let (ours, mut theirs) = tokio::io::duplex(64);
        conn.arm();
        let mut io = Deadline::new(ours, conn);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            theirs.read_to_end(&mut all).await.map(|_| all.len())
        });
        io.write_all(&[b'x'; 4096]).await.unwrap();
        drop(io);
        assert_eq!(reader.await.unwrap().unwrap(), 4096);
    }

    #[tokio::test(start_paused = true)]
    async fn an_accept_error_pauses_the_loop() {
        let mut errors = AcceptErrors::new("test");
        let t0 = Instant::now();
        for n in 1..=3 {
            errors
                .failed(&io::Error::from_raw_os_error(libc::EMFILE))
                .await;
            assert_eq!(t0.elapsed(), n * accept_backoff());
        }
    }
}
