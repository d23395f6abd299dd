//! A feed host for tests: a small HTTP/1.1 server in a network namespace whose answers the
//! test sets per path, including the hostile ones a real feed host can give (error pages,
//! endless bodies, trickling bytes). It honours `If-None-Match` like a real host and records
//! every request.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Result;

/// What the server answers on a path.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with this body, content type and ETag; `304` when the request's `If-None-Match`
    /// is the ETag.
    Body {
        body: Vec<u8>,
        content_type: String,
        etag: String,
    },
    /// This status with a short HTML body.
    Status(u16),
    /// 200 claiming `len` bytes and sending them (a repeated address line) until the client
    /// hangs up.
    Endless { len: u64 },
    /// 200 whose body arrives one line every `every`.
    Trickle { every: Duration },
}

impl Reply {
    /// A text/plain list with an ETag derived from the content.
    pub fn list(body: &str) -> Self {
        let etag = format!("\"{:x}\"", fnv(body.as_bytes()));
        Reply::Body {
            body: body.as_bytes().to_vec(),
            content_type: "text/plain; charset=utf-8".into(),
            etag,
        }
    }
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ *x as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One request the server saw: (path, status answered).
pub type Hit = (String, u16);

/// The server; it stops when dropped (its threads end with the process otherwise).
pub struct FeedServer {
    pub addr: SocketAddr,
    routes: Arc<Mutex<BTreeMap<String, Reply>>>,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl FeedServer {
    /// Listen on `bind` (port 0 for any) inside the namespace at `netns`.
    pub fn start(netns: &Path, bind: SocketAddr) -> Result<Self> {
        let listener = hostnet::netns::in_netns(netns, || TcpListener::bind(bind))??;
        let addr = listener.local_addr()?;
        let routes: Arc<Mutex<BTreeMap<String, Reply>>> = Arc::default();
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let (r, h) = (routes.clone(), hits.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (r, h) = (r.clone(), h.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &r, &h);
                });
            }
        });
        Ok(FeedServer { addr, routes, hits })
    }

    /// Set what `path` answers.
    pub fn set(&self, path: &str, reply: Reply) {
        self.routes
            .lock()
            .expect("routes")
            .insert(path.to_owned(), reply);
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Statuses answered on `path`, in order.
    pub fn statuses(&self, path: &str) -> Vec<u16> {
        self.hits
            .lock()
            .expect("hits")
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, s)| *s)
            .collect()
    }
}

fn serve(
    conn: TcpStream,
    routes: &Mutex<BTreeMap<String, Reply>>,
    hits: &Mutex<Vec<Hit>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut if_none_match = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("if-none-match") {
                if_none_match = Some(v.trim().to_owned());
            }
        }
    }
    let reply = routes.lock().expect("routes").get(&path).cloned();
    let mut w = conn;
    let status = match &reply {
        None => 404,
        Some(Reply::Body { etag, .. }) if if_none_match.as_deref() == Some(etag) => 304,
        Some(Reply::Body { .. } | Reply::Endless { .. } | Reply::Trickle { .. }) => 200,
        Some(Reply::Status(s)) => *s,
    };
    hits.lock().expect("hits").push((path, status));
    match reply {
        Some(Reply::Body {
            body,
            content_type,
            etag,
        }) if status == 200 => {
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nETag: {etag}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            w.write_all(&body)?;
        }
        Some(Reply::Endless { len }) => {
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
            )?;
            let chunk = "198.51.100.1\n".repeat(5000);
            let mut sent = 0u64;
            while sent < len {
                w.write_all(chunk.as_bytes())?;
                sent += chunk.len() as u64;
            }
        }
        Some(Reply::Trickle { every }) => {
            w.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
            )?;
            loop {
                w.write_all(b"198.51.100.2\n")?;
                w.flush()?;
                std::thread::sleep(every);
            }
        }
        _ => {
            let body = format!("<html><body>{status}</body></html>\n");
            let reason = if status == 304 {
                "Not Modified"
            } else {
                "Error"
            };
            if status == 304 {
                write!(w, "HTTP/1.1 304 {reason}\r\nConnection: close\r\n\r\n")?;
            } else {
                write!(
                    w,
                    "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )?;
            }
        }
    }
    w.flush()
}
