//! The health listener out of file descriptors: its accept loop pauses between attempts
//! instead of spinning, and serves again once descriptors are freed.
//!
//! Alone in its test binary, so in a process of its own: it lowers the process's
//! RLIMIT_NOFILE and fills the descriptor table. Time is tokio's paused clock, so the count
//! of attempts per pause is exact, not a matter of how fast the machine is.

use std::sync::Arc;

use agent::health::{accept_backoff, serve};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Backoff periods the loop is watched for.
const PERIODS: u32 = 20;

/// Lower the soft limit to a few descriptors above those open, then open files until none
/// is left. Returns the files (closing them frees the table) and the limit to restore.
fn exhaust_descriptors() -> (Vec<std::fs::File>, Rlimit) {
    let before = getrlimit(Resource::Nofile);
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(open + 16),
            maximum: before.maximum,
        },
    )
    .unwrap();
    let mut held = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("opening /dev/null: {e}"),
        }
    }
    assert!(!held.is_empty(), "the table was filled by this test");
    (held, before)
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)?
                .strip_prefix(' ')?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

#[test]
fn out_of_descriptors_the_accept_loop_pauses_then_serves_again() {
    let metrics = agent::metrics::install().expect("the only recorder in this process");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        client
            .write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        // The client waits in the backlog, so the listener stays readable and every accept
        // attempt fails with EMFILE: a loop that does not pause retries at once, forever.
        let (held, limit) = exhaust_descriptors();
        tokio::spawn(serve(listener, Arc::default(), Some(metrics.clone())));
        for _ in 0..PERIODS {
            // Each step lets every task that can run do so before time moves on.
            tokio::time::advance(accept_backoff()).await;
        }
        let attempts = metric(
            &metrics.render(),
            "septa_accept_errors_total{listener=\"health\"}",
        );
        // At most one attempt per pause (and the first before any), and at least one: the
        // table was full.
        assert!(
            (1.0..=f64::from(PERIODS + 1)).contains(&attempts),
            "{attempts} failed accepts in {PERIODS} backoff periods"
        );
        drop(held);
        setrlimit(Resource::Nofile, limit).unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.0 200 OK"), "{answer:?}");
    });
}
