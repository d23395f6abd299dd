//! `septa status`: one node's enforcement, asked of its agent over the socket: whether a
//! good state is enforced and at which policy revision, septa's entry in the CNI
//! configuration, the pods enforced, adopted and not adoptable (with why), threat feeds and
//! DNS-aware rules. [`render`] is the pure part; [`cmd_status`] does the asking.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use api::protocol::{NodeStatus, Request, Response};

/// How the node is doing, as the exit code says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Enforcing, CNI entry in place (or not managed), every pod enforced.
    Good = 0,
    /// The agent answered, but something needs attention.
    Attention = 1,
    /// The agent could not be asked.
    Unreachable = 2,
}

/// Ask the agent at `socket` for its status.
pub fn ask(socket: &Path, timeout: Duration) -> std::io::Result<Response> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("septa agent at {}: {e}", socket.display()),
        )
    })?;
    // A process of another user bound where the agent's socket should be (while the agent
    // was down) must not be able to report a node as enforcing.
    let peer = rustix::net::sockopt::socket_peercred(&s).map_err(std::io::Error::from)?;
    if peer.uid != rustix::process::geteuid() {
        return Err(std::io::Error::other(format!(
            "{} is served by a process of uid {}, not by the septa agent (uid {})",
            socket.display(),
            peer.uid.as_raw(),
            rustix::process::geteuid().as_raw()
        )));
    }
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(&Request::Status)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut answer = String::new();
    // A status lists unadopted pods and feeds: bounded, but larger than a request line.
    BufReader::new(std::io::Read::take(s, api::protocol::MAX_LINE as u64 * 16))
        .read_line(&mut answer)?;
    serde_json::from_str(&answer).map_err(|e| {
        std::io::Error::other(format!(
            "malformed answer from the agent at {}: {e}",
            socket.display()
        ))
    })
}

/// Whether `r` shows a node that needs attention.
pub fn health(r: &Response) -> Health {
    let Some(n) = &r.node else {
        return if r.ok {
            Health::Good
        } else {
            Health::Attention
        };
    };
    let cni_ok = n.cni.mode == "off" || n.cni.present;
    let feeds_ok = n.feeds.iter().all(|f| f.error.is_none());
    if r.ok && n.ready && cni_ok && r.unadopted.is_empty() && feeds_ok && r.warning.is_empty() {
        Health::Good
    } else {
        Health::Attention
    }
}

/// `s` with control characters (a terminal escape in a feed's error text, say) shown as `?`.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The status as text, one aspect per line; what the agent reports is printed without
/// control characters.
pub fn render(r: &Response) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<9} {}\n", printable(&v)));
    let Some(n) = &r.node else {
        line(
            "state",
            if r.ok {
                "enforcing".into()
            } else {
                format!("not ready: {}", r.error)
            },
        );
        return out;
    };
    line("node", format!("{} (source: {})", n.node, n.source));
    line("state", state(r, n));
    line("cni", cni(n));
    let mut pods = format!("{} enforced ({} adopted)", n.enforced, n.adopted);
    if !r.unadopted.is_empty() {
        pods.push_str(&format!(
            ", {} running unenforced (not adoptable until restarted):",
            r.unadopted.len()
        ));
    }
    line("pods", pods);
    for u in &r.unadopted {
        line("", format!("  {}: {}", u.pod, u.reason));
    }
    if n.feeds.is_empty() {
        line("feeds", "none".into());
    }
    for (i, f) in n.feeds.iter().enumerate() {
        let mut v = format!("{}: {} ranges blocked", f.name, f.entries);
        if let Some(e) = &f.error {
            v.push_str(&format!(
                " (last refresh failed: {e}; the last good list stays)"
            ));
        }
        line(if i == 0 { "feeds" } else { "" }, v);
    }
    line(
        "dns",
        format!(
            "{} names allowed by FqdnPolicies, {} addresses learned from answers",
            n.dns.names, n.dns.addresses
        ),
    );
    out
}

fn state(r: &Response, n: &NodeStatus) -> String {
    match (n.ready, &n.problem) {
        (true, None) => format!("enforcing, policy revision {}", n.revision),
        (true, Some(p)) => format!(
            "enforcing the last good state, policy revision {} (warning: {p})",
            n.revision
        ),
        (false, Some(p)) => format!("not ready: {p}"),
        (false, None) => format!("not ready: {}", r.error),
    }
}

fn cni(n: &NodeStatus) -> String {
    let c = &n.cni;
    if c.mode == "off" {
        return "not managed by septa (--cni-mode off)".into();
    }
    let file = c.file.as_deref().unwrap_or("(no file)");
    match (&c.error, c.present) {
        (None, true) => format!("{}: septa-cni entry present in {file}", c.mode),
        (Some(e), _) => format!("{}: septa-cni entry NOT in place: {e}", c.mode),
        (None, false) => format!("{}: septa-cni entry NOT in place in {file}", c.mode),
    }
}

/// Ask, print (text or the agent's JSON answer) and return the exit code.
pub fn cmd_status(socket: &Path, json: bool, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let r = match ask(socket, Duration::from_secs(10)) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "error: {e} (is septa-agent running on this node?)");
            return Health::Unreachable as i32;
        }
    };
    let text = if json {
        serde_json::to_string_pretty(&r).unwrap_or_default() + "\n"
    } else {
        render(&r)
    };
    let _ = out.write_all(text.as_bytes());
    health(&r) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::protocol::{CniStatus, DnsStatus, FeedStatus, Unadopted};

    fn good() -> Response {
        Response {
            node: Some(Box::new(NodeStatus {
                node: "node-1".into(),
                source: "kubernetes".into(),
                ready: true,
                problem: None,
                revision: 7,
                enforced: 3,
                adopted: 1,
                cni: CniStatus {
                    mode: "splice".into(),
                    file: Some("/etc/cni/net.d/10-flannel.conflist".into()),
                    present: true,
                    error: None,
                },
                feeds: vec![FeedStatus {
                    name: "abuse".into(),
                    entries: 12,
                    error: None,
                }],
                dns: DnsStatus {
                    names: 2,
                    addresses: 5,
                },
            })),
            ..Response::ok()
        }
    }

    #[test]
    fn a_healthy_node() {
        let r = good();
        assert_eq!(health(&r), Health::Good);
        let t = render(&r);
        assert!(t.contains("node-1 (source: kubernetes)"), "{t}");
        assert!(t.contains("enforcing, policy revision 7"), "{t}");
        assert!(
            t.contains("splice: septa-cni entry present in /etc/cni/net.d/10-flannel.conflist"),
            "{t}"
        );
        assert!(t.contains("3 enforced (1 adopted)"), "{t}");
        assert!(t.contains("abuse: 12 ranges blocked"), "{t}");
        assert!(t.contains("2 names allowed"), "{t}");
    }

    #[test]
    fn every_problem_needs_attention_and_is_shown() {
        let mut r = good();
        r.node.as_mut().unwrap().cni = CniStatus {
            mode: "splice".into(),
            file: None,
            present: false,
            error: Some("/etc/cni/net.d: no network configuration file".into()),
        };
        assert_eq!(health(&r), Health::Attention);
        assert!(render(&r).contains("NOT in place: /etc/cni/net.d: no network"));

        let mut r = good();
        r.unadopted.push(Unadopted {
            pod: "shop/legacy".into(),
            reason: "two namespaces hold 10.88.0.5".into(),
        });
        assert_eq!(health(&r), Health::Attention);
        let t = render(&r);
        assert!(t.contains("1 running unenforced"), "{t}");
        assert!(
            t.contains("shop/legacy: two namespaces hold 10.88.0.5"),
            "{t}"
        );

        let mut r = good();
        r.node.as_mut().unwrap().feeds[0].error = Some("HTTP 503".into());
        assert_eq!(health(&r), Health::Attention);
        assert!(render(&r).contains("last refresh failed: HTTP 503"));

        let mut r = good();
        r.ok = false;
        r.error = "agent not ready: waiting".into();
        let n = r.node.as_mut().unwrap();
        n.ready = false;
        n.problem = Some("waiting for the first lists".into());
        assert_eq!(health(&r), Health::Attention);
        assert!(render(&r).contains("not ready: waiting for the first lists"));
    }

    #[test]
    fn terminal_escapes_from_the_agent_are_not_printed() {
        let mut r = good();
        r.node.as_mut().unwrap().feeds[0].error = Some("\u{1b}]0;owned\u{7}\u{1b}[2J".into());
        let t = render(&r);
        assert!(!t.contains('\u{1b}') && !t.contains('\u{7}'), "{t:?}");
        assert!(t.contains("?]0;owned??[2J"), "{t}");
    }

    #[test]
    fn cni_off_is_not_a_problem() {
        let mut r = good();
        r.node.as_mut().unwrap().cni = CniStatus {
            mode: "off".into(),
            ..Default::default()
        };
        assert_eq!(health(&r), Health::Good);
        assert!(render(&r).contains("not managed by septa"));
    }

    #[test]
    fn an_absent_agent_is_exit_2() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = cmd_status(
            Path::new("/nonexistent/septa.sock"),
            false,
            &mut out,
            &mut err,
        );
        assert_eq!(code, 2);
        assert!(String::from_utf8_lossy(&err).contains("/nonexistent/septa.sock"));
    }
}
