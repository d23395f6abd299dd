//! Fetching a feed: HTTP(S) with conditional requests, or a local file, always bounded in
//! time and size.
//!
//! - `ETag` / `Last-Modified` from the last good fetch are sent back as `If-None-Match` /
//!   `If-Modified-Since`; a `304 Not Modified` costs the feed host nothing and changes nothing.
//! - One deadline covers connect, headers and the whole body, so a server that trickles bytes
//!   cannot hold a refresh forever.
//! - The body is read in chunks and the fetch fails as soon as it passes the size limit
//!   (the `Content-Length` is checked first when there is one), so a 2 GB answer costs at most
//!   the limit in memory.
//! - Content types that are certainly not a list (HTML error and captive-portal pages, images,
//!   archives) are refused before the body is read.

use std::{path::Path, time::Duration};

use super::spec::Source;

/// Bounds on one fetch.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Deadline for the whole request, body included.
    pub timeout: Duration,
    /// Largest body accepted, in bytes.
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(60),
            max_bytes: 64 << 20,
        }
    }
}

/// What identifies the version of a feed we hold (sent back on the next fetch).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// For files: (size, modification time in ns).
    pub file_stamp: Option<(u64, u128)>,
}

/// The outcome of a successful fetch.
#[derive(Debug)]
pub enum Fetched {
    /// The source says nothing changed since `Validators`.
    NotModified,
    /// A new body and the validators to send next time.
    Body(Vec<u8>, Validators),
}

/// Why a fetch failed. The last good list stays in force whatever the reason.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: no complete answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{at}: body is larger than the {limit}-byte limit")]
    TooLarge { at: String, limit: u64 },
    #[error("{url}: content type `{content_type}` is not a list of addresses (accepted: text/*, application/json, application/csv, application/octet-stream)")]
    ContentType { url: String, content_type: String },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

impl FetchError {
    /// A short label for the `septa_feed_refresh_errors_total{reason}` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            FetchError::Status { .. } => "http_status",
            FetchError::Timeout { .. } => "timeout",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::ContentType { .. } => "content_type",
            FetchError::Transport { .. } => "transport",
            FetchError::File { .. } => "file",
        }
    }
}

/// An HTTP client for feeds (shared: it pools connections and holds the TLS roots).
///
/// `extra_roots` are trusted besides the public web roots (an internal feed mirror signed by
/// the organisation's CA; see [`load_ca_bundle`]). An error here is a start-up error: a
/// client quietly built without the requested roots would fail every HTTPS refresh later.
pub fn client(extra_roots: &[reqwest::Certificate]) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("septa-agent/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        // Feeds are fetched with a bounded body; redirects to another host are common
        // (GitHub raw, CDNs) and bounded too.
        .redirect(reqwest::redirect::Policy::limited(5));
    for cert in extra_roots {
        builder = builder.add_root_certificate(cert.clone());
    }
    builder
        .build()
        .map_err(|e| format!("building the feed HTTP client: {}", error_chain(&e)))
}

/// Read a PEM bundle of CA certificates to trust for HTTPS feeds (`--feed-ca-file`).
/// Refuses a file with no certificate in it: a key or a DER file given by mistake would
/// otherwise add nothing and every refresh would fail with an unknown issuer.
pub fn load_ca_bundle(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let at = |m: String| format!("{}: {m}", path.display());
    let pem = std::fs::read(path).map_err(|e| at(format!("cannot read: {e}")))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| at(format!("not a PEM certificate bundle: {}", error_chain(&e))))?;
    if certs.is_empty() {
        return Err(at(
            "no `-----BEGIN CERTIFICATE-----` block in it (a PEM bundle of CA certificates is expected)".into(),
        ));
    }
    // Adding to a root store parses each certificate; do it now so a damaged one is named
    // at start-up rather than at the first refresh.
    client(&certs).map_err(at)?;
    Ok(certs)
}

/// Fetch `source` unless it is unchanged since `last`.
pub async fn fetch(
    client: &reqwest::Client,
    source: &Source,
    last: &Validators,
    limits: Limits,
) -> Result<Fetched, FetchError> {
    match source {
        Source::Url(url) => {
            match tokio::time::timeout(limits.timeout, fetch_url(client, url, last, limits)).await {
                Ok(r) => r,
                Err(_) => Err(FetchError::Timeout {
                    url: url.clone(),
                    timeout: limits.timeout,
                }),
            }
        }
        Source::File(path) => fetch_file(path, last, limits).await,
    }
}

async fn fetch_url(
    client: &reqwest::Client,
    url: &str,
    last: &Validators,
    limits: Limits,
) -> Result<Fetched, FetchError> {
    let transport = |e: reqwest::Error| FetchError::Transport {
        url: url.to_owned(),
        // The chain carries the useful part (connection refused, certificate, ...).
        message: error_chain(&e),
    };
    let mut req = client.get(url);
    if let Some(etag) = &last.etag {
        req = req.header(reqwest::header::IF_NONE_MATCH, etag);
    }
    if let Some(lm) = &last.last_modified {
        req = req.header(reqwest::header::IF_MODIFIED_SINCE, lm);
    }
    let mut resp = req.send().await.map_err(transport)?;
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_MODIFIED {
        return Ok(Fetched::NotModified);
    }
    if !status.is_success() {
        return Err(FetchError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
        });
    }
    let header = |name| {
        resp.headers()
            .get(name)
            .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(ct) = header(reqwest::header::CONTENT_TYPE) {
        if !acceptable_content_type(&ct) {
            return Err(FetchError::ContentType {
                url: url.to_owned(),
                content_type: ct,
            });
        }
    }
    let validators = Validators {
        etag: header(reqwest::header::ETAG),
        last_modified: header(reqwest::header::LAST_MODIFIED),
        file_stamp: None,
    };
    let too_large = || FetchError::TooLarge {
        at: url.to_owned(),
        limit: limits.max_bytes,
    };
    if resp.content_length().is_some_and(|n| n > limits.max_bytes) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if body.len() as u64 + chunk.len() as u64 > limits.max_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Fetched::Body(body, validators))
}

async fn fetch_file(path: &Path, last: &Validators, limits: Limits) -> Result<Fetched, FetchError> {
    let err = |message: String| FetchError::File {
        path: path.display().to_string(),
        message,
    };
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| err(format!("cannot open: {e}")))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    if meta.len() > limits.max_bytes {
        return Err(FetchError::TooLarge {
            at: path.display().to_string(),
            limit: limits.max_bytes,
        });
    }
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let stamp = Some((meta.len(), mtime));
    if last.file_stamp.is_some() && last.file_stamp == stamp {
        return Ok(Fetched::NotModified);
    }
    use tokio::io::AsyncReadExt;
    let f = tokio::fs::File::open(path)
        .await
        .map_err(|e| err(format!("cannot open: {e}")))?;
    let mut body = Vec::new();
    // The file may grow between stat and read; read one byte past the limit to notice.
    f.take(limits.max_bytes + 1)
        .read_to_end(&mut body)
        .await
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if body.len() as u64 > limits.max_bytes {
        return Err(FetchError::TooLarge {
            at: path.display().to_string(),
            limit: limits.max_bytes,
        });
    }
    Ok(Fetched::Body(
        body,
        Validators {
            file_stamp: stamp,
            ..Validators::default()
        },
    ))
}

/// Whether a `Content-Type` can carry a list of addresses.
pub fn acceptable_content_type(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence == "text/html" || essence == "application/xhtml+xml" {
        return false;
    }
    essence.starts_with("text/")
        || matches!(
            essence.as_str(),
            "application/json" | "application/csv" | "application/octet-stream" | ""
        )
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}

/// The wait before retry `attempt` (0-based) after a failed refresh: doubling from `min`,
/// never more than the feed's refresh period.
pub fn backoff(attempt: u32, min: Duration, refresh: Duration) -> Duration {
    let factor = 1u32 << attempt.min(16);
    min.saturating_mul(factor).min(refresh.max(min))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        for ok in [
            "text/plain",
            "text/plain; charset=utf-8",
            "TEXT/CSV",
            "application/json",
            "application/octet-stream",
        ] {
            assert!(acceptable_content_type(ok), "{ok}");
        }
        for bad in [
            "text/html; charset=UTF-8",
            "application/xhtml+xml",
            "image/png",
            "application/zip",
            "application/gzip",
        ] {
            assert!(!acceptable_content_type(bad), "{bad}");
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn files_are_reread_only_when_they_change_and_are_bounded() {
        let dir = std::env::temp_dir().join(format!("septa-feed-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("list.txt");
        std::fs::write(&path, "192.0.2.1\n").unwrap();
        let src = Source::File(path.clone());
        let limits = Limits {
            timeout: Duration::from_secs(5),
            max_bytes: 64,
        };
        let rt = rt();
        let Fetched::Body(body, v) = rt
            .block_on(fetch(
                &client(&[]).unwrap(),
                &src,
                &Validators::default(),
                limits,
            ))
            .unwrap()
        else {
            panic!("first read must return the body");
        };
        assert_eq!(body, b"192.0.2.1\n");
        assert!(matches!(
            rt.block_on(fetch(&client(&[]).unwrap(), &src, &v, limits))
                .unwrap(),
            Fetched::NotModified
        ));
        // A different size is a change even within the same mtime tick.
        std::fs::write(&path, "192.0.2.1\n192.0.2.2\n").unwrap();
        assert!(matches!(
            rt.block_on(fetch(&client(&[]).unwrap(), &src, &v, limits))
                .unwrap(),
            Fetched::Body(..)
        ));
        std::fs::write(&path, "x".repeat(65)).unwrap();
        let e = rt
            .block_on(fetch(&client(&[]).unwrap(), &src, &v, limits))
            .unwrap_err();
        assert_eq!(e.metric_label(), "too_large");
        assert!(e.to_string().contains("list.txt"), "{e}");
        let missing = Source::File(dir.join("nope.txt"));
        let e = rt
            .block_on(fetch(
                &client(&[]).unwrap(),
                &missing,
                &Validators::default(),
                limits,
            ))
            .unwrap_err();
        assert!(e.to_string().contains("nope.txt: cannot open"), "{e}");
        let e = rt
            .block_on(fetch(
                &client(&[]).unwrap(),
                &Source::File(dir.clone()),
                &Validators::default(),
                limits,
            ))
            .unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An HTTPS feed host on loopback whose certificate a private CA signed, as an internal
    /// mirror would be. Returns the URL and the CA's PEM; serves `body` to every connection.
    fn https_feed_host(body: &'static str) -> (String, String) {
        use std::io::{Read, Write};
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "septa test feed CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = std::sync::Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![leaf.der().clone()],
                    rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
                )
                .unwrap(),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}/drop.txt", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                // A client that refuses the certificate ends the handshake here: next one.
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                if request.is_empty() {
                    continue;
                }
                let _ = write!(
                    tls,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        (url, ca.pem())
    }

    #[test]
    fn https_feeds_need_a_trusted_issuer_and_a_ca_file_adds_one() {
        let (url, ca_pem) = https_feed_host("192.0.2.1\n");
        let src = Source::Url(url.clone());
        let rt = rt();
        // The public roots do not know the mirror's CA: refused, and the reason is named.
        let e = rt
            .block_on(fetch(
                &client(&[]).unwrap(),
                &src,
                &Validators::default(),
                Limits::default(),
            ))
            .unwrap_err();
        assert_eq!(e.metric_label(), "transport", "{e}");
        assert!(
            e.to_string().contains(&url) && e.to_string().contains("certificate"),
            "{e}"
        );
        let dir = std::env::temp_dir().join(format!("septa-feed-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &ca_pem).unwrap();
        let roots = load_ca_bundle(&ca_file).unwrap();
        let Fetched::Body(body, _) = rt
            .block_on(fetch(
                &client(&roots).unwrap(),
                &src,
                &Validators::default(),
                Limits::default(),
            ))
            .unwrap()
        else {
            panic!("a 200 must return the body");
        };
        assert_eq!(body, b"192.0.2.1\n");

        // Bad CA files are refused up front, naming the file and what is wrong.
        let e = load_ca_bundle(&dir.join("missing.pem")).unwrap_err();
        assert!(e.contains("missing.pem: cannot read"), "{e}");
        let junk = dir.join("junk.pem");
        std::fs::write(
            &junk,
            "192.0.2.0/24\n-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = load_ca_bundle(&junk).unwrap_err();
        assert!(
            e.contains("junk.pem") && e.contains("BEGIN CERTIFICATE"),
            "{e}"
        );
        let damaged = dir.join("damaged.pem");
        std::fs::write(
            &damaged,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = load_ca_bundle(&damaged).unwrap_err();
        assert!(e.contains("damaged.pem"), "{e}");
        std::fs::write(&damaged, &ca_pem[..ca_pem.len() / 2]).unwrap();
        assert!(load_ca_bundle(&damaged).is_err(), "a truncated bundle");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unreachable_hosts_fail_with_the_url() {
        // A port nothing listens on (bound, then released) on loopback.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/drop.txt");
        let e = rt()
            .block_on(fetch(
                &client(&[]).unwrap(),
                &Source::Url(url.clone()),
                &Validators::default(),
                Limits::default(),
            ))
            .unwrap_err();
        assert_eq!(e.metric_label(), "transport");
        assert!(e.to_string().starts_with(&url), "{e}");
    }

    #[test]
    fn backoff_doubles_up_to_the_refresh_period() {
        let (min, refresh) = (Duration::from_secs(5), Duration::from_secs(3600));
        let waits: Vec<u64> = (0..12)
            .map(|a| backoff(a, min, refresh).as_secs())
            .collect();
        assert_eq!(
            waits,
            [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
        );
        assert_eq!(backoff(u32::MAX, min, refresh), refresh);
        // A refresh shorter than the minimum retry: the minimum wins.
        assert_eq!(backoff(3, min, Duration::from_secs(1)), min);
    }
}
