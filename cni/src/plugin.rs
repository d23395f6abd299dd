//! The plugin's logic, separated from process I/O so it is tested with plain values.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, ErrorKind, Write},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Deserialize;
use serde_json::{json, Map, Value};

use api::protocol::{Endpoint, Request, Response, DEFAULT_SOCKET};

/// CNI versions this plugin speaks. 0.3.x results have the 0.4.0 shape and chaining with
/// `prevResult`; flannel, Calico, kindnet and the AWS VPC CNI still write `0.3.1` conflists.
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest of them: what VERSION and errors before a configuration was read speak.
pub const LATEST: &str = "1.1.0";
/// A CNI error (spec section "Error").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The JSON the spec wants on stdout.
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details })
    }
}

/// Well-known codes (CNI spec) and septa's own (100+).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const NOT_A_VETH: u32 = 100;
    pub const AGENT_REFUSED: u32 = 101;
    pub const CHECK_FAILED: u32 = 102;
}

/// Keys the CNI spec defines for a plugin's configuration as the runtime passes it: the
/// plugin object's own (`type`, `capabilities`, the well-known `ipMasq`, `ipam`, `dns`) and
/// those the runtime inserts (`cniVersion`, `name`, `prevResult`, `runtimeConfig`, `args`).
pub const SPEC_KEYS: [&str; 10] = [
    "cniVersion",
    "name",
    "type",
    "capabilities",
    "runtimeConfig",
    "args",
    "prevResult",
    "ipMasq",
    "ipam",
    "dns",
];
/// The spec reserves keys with this prefix for the runtime.
pub const RESERVED_PREFIX: &str = "cni.dev/";
/// septa-cni's own keys.
pub const SEPTA_KEYS: [&str; 3] = ["agentSocket", "timeoutSeconds", "socketWaitSeconds"];
/// How long ADD and CHECK wait for the agent's socket by default, and at most.
pub const DEFAULT_SOCKET_WAIT: Duration = Duration::from_secs(30);
/// See [`DEFAULT_SOCKET_WAIT`]: a longer wait would hold the runtime's sandbox creation.
pub const MAX_SOCKET_WAIT: Duration = Duration::from_secs(300);
/// How often a missing or refusing socket is tried again.
pub const SOCKET_POLL: Duration = Duration::from_millis(200);

/// Keys of `conf` that neither the spec nor septa-cni define, in the object's order.
pub fn unknown_keys(conf: &Map<String, Value>) -> Vec<&str> {
    conf.keys()
        .map(String::as_str)
        .filter(|k| {
            !SPEC_KEYS.contains(k) && !SEPTA_KEYS.contains(k) && !k.starts_with(RESERVED_PREFIX)
        })
        .collect()
}

/// A misspelt key (`agentSockte`) would otherwise silently fall back to a default.
pub fn check_keys(conf: &Map<String, Value>) -> Result<(), CniError> {
    let unknown = unknown_keys(conf);
    let Some(first) = unknown.first() else {
        return Ok(());
    };
    let hint = SEPTA_KEYS
        .iter()
        .find(|k| k.eq_ignore_ascii_case(first) || near(k, first))
        .map(|k| format!(" (did you mean {k:?}?)"))
        .unwrap_or_default();
    Err(CniError::new(
        code::INVALID_CONFIG,
        format!("unknown key {first:?} in septa-cni's configuration{hint}"),
        format!(
            "unknown: {}; septa-cni reads {} besides the CNI spec's keys",
            unknown.join(", "),
            SEPTA_KEYS.join(", ")
        ),
    ))
}

/// Same length and at most two differing positions, or one letter missing or extra: the
/// typos worth naming the intended key for.
fn near(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() == b.len() {
        return a.iter().zip(b).filter(|(x, y)| x != y).count() <= 2;
    }
    let (short, long) = if a.len() < b.len() { (a, b) } else { (b, a) };
    long.len() == short.len() + 1
        && (0..long.len()).any(|skip| {
            long.iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, c)| c)
                .eq(short.iter())
        })
}

/// The plugin's network configuration (the keys it reads; [`check_keys`] refuses unknown ones).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
    /// Seconds to wait for the agent's answer.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Seconds ADD and CHECK wait for the agent's socket to appear or accept connections.
    #[serde(default)]
    pub socket_wait_seconds: Option<u64>,
    #[serde(default)]
    pub prev_result: Option<Value>,
    #[serde(default)]
    pub args: Option<Value>,
    /// Runtime-supplied values for declared capabilities (`septa.dev/labels`).
    #[serde(default)]
    pub runtime_config: Option<Value>,
}

/// The CNI_* environment.
#[derive(Debug, Default, Clone)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
}

impl Env {
    pub fn from_process() -> Self {
        let g = |k: &str| std::env::var(k).unwrap_or_default();
        Env {
            command: g("CNI_COMMAND"),
            container_id: g("CNI_CONTAINERID"),
            netns: g("CNI_NETNS"),
            ifname: g("CNI_IFNAME"),
            args: g("CNI_ARGS"),
        }
    }

    /// `K=V;K=V` pairs of CNI_ARGS.
    pub fn args_map(&self) -> BTreeMap<String, String> {
        self.args
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn require(&self, cmd: &str) -> Result<(), CniError> {
        for (k, v) in [
            ("CNI_CONTAINERID", &self.container_id),
            ("CNI_IFNAME", &self.ifname),
        ] {
            if v.is_empty() {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("{k} is required for {cmd}"),
                    "",
                ));
            }
        }
        if cmd == "ADD" && self.netns.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                "CNI_NETNS is required for ADD",
                "",
            ));
        }
        Ok(())
    }
}

impl NetConf {
    /// The agent's socket.
    pub fn socket(&self) -> PathBuf {
        self.agent_socket
            .clone()
            .unwrap_or_else(|| DEFAULT_SOCKET.into())
    }

    /// How long to wait for the agent's answer.
    pub fn timeout(&self) -> Duration {
        answer_timeout(self.timeout_seconds)
    }

    /// How long ADD and CHECK wait for the socket, capped at [`MAX_SOCKET_WAIT`].
    pub fn socket_wait(&self) -> Duration {
        self.socket_wait_seconds
            .map_or(DEFAULT_SOCKET_WAIT, Duration::from_secs)
            .min(MAX_SOCKET_WAIT)
    }
}

fn answer_timeout(seconds: Option<u64>) -> Duration {
    Duration::from_secs(seconds.unwrap_or(10).clamp(1, 300))
}

/// Parse stdin strictly: JSON, an object, only known keys, a supported version.
pub fn parse_conf(stdin: &[u8]) -> Result<NetConf, CniError> {
    let decode = |e: serde_json::Error| {
        CniError::new(
            code::DECODE_FAILURE,
            "cannot decode the network configuration",
            e.to_string(),
        )
    };
    let value: Value = serde_json::from_slice(stdin).map_err(decode)?;
    let Value::Object(map) = &value else {
        return Err(CniError::new(
            code::DECODE_FAILURE,
            "the network configuration is not a JSON object",
            "",
        ));
    };
    check_keys(map)?;
    let conf: NetConf = serde_json::from_value(value).map_err(decode)?;
    if !SUPPORTED.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CNI version {:?} is not supported", conf.cni_version),
            format!("supported: {}", SUPPORTED.join(", ")),
        ));
    }
    Ok(conf)
}

/// Talk to the agent: one request, one response, with a deadline. Nothing is sent unless the
/// process serving the socket runs as this plugin's user (see [`check_peer`]). A socket that
/// is missing or refuses connections is an error at once; see [`call_agent_waiting`].
pub fn call_agent(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, CniError> {
    call_agent_waiting(socket, req, timeout, Duration::ZERO)
}

/// [`call_agent`], but a socket that is missing or refuses connections (the agent is starting
/// or restarting) is tried again every [`SOCKET_POLL`] until `wait` has passed.
pub fn call_agent_waiting(
    socket: &Path,
    req: &Request,
    timeout: Duration,
    wait: Duration,
) -> Result<Response, CniError> {
    let s = wait_for_agent(
        socket,
        wait,
        &mut SystemClock::start(),
        || match UnixStream::connect(socket) {
            Ok(s) => Attempt::Done(check_peer(&s, socket).map(|()| s)),
            Err(e) if not_up(&e) => Attempt::NotUp(e.to_string()),
            Err(e) => Attempt::Done(Err(unreachable(socket, e))),
        },
    )?;
    exchange(s, socket, req, timeout)
}

/// Errors that mean nobody serves the socket yet: no file, or a file nobody listens on (left
/// by an agent that is restarting), or a full backlog.
fn not_up(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::NotFound | ErrorKind::ConnectionRefused | ErrorKind::WouldBlock
    )
}

fn unreachable(socket: &Path, e: std::io::Error) -> CniError {
    CniError::new(
        code::TRY_AGAIN_LATER,
        format!("septa agent not reachable at {}", socket.display()),
        e.to_string(),
    )
}

/// Time for [`wait_for_agent`]: the real clock in the plugin, a fake one in tests.
pub trait Clock {
    /// Time since the wait began.
    fn elapsed(&self) -> Duration;
    /// Let `d` pass.
    fn sleep(&mut self, d: Duration);
}

/// The monotonic clock.
pub struct SystemClock(Instant);

impl SystemClock {
    /// A clock whose `elapsed` counts from now.
    pub fn start() -> Self {
        SystemClock(Instant::now())
    }
}

impl Clock for SystemClock {
    fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d)
    }
}

/// One try at reaching the agent.
pub enum Attempt<T> {
    /// Final: reached (or failed in a way waiting does not fix, such as an impostor).
    Done(Result<T, CniError>),
    /// Nobody serves the socket yet; the text says why.
    NotUp(String),
}

/// Try `attempt` until it is [`Attempt::Done`] or `budget` has passed, sleeping
/// [`SOCKET_POLL`] (never past the budget) in between. Running out is code 11, try again later.
pub fn wait_for_agent<T>(
    socket: &Path,
    budget: Duration,
    clock: &mut impl Clock,
    mut attempt: impl FnMut() -> Attempt<T>,
) -> Result<T, CniError> {
    loop {
        let why = match attempt() {
            Attempt::Done(r) => return r,
            Attempt::NotUp(why) => why,
        };
        let spent = clock.elapsed();
        if spent >= budget {
            let mut msg = format!("septa agent not reachable at {}", socket.display());
            if !budget.is_zero() {
                msg += &format!(
                    ": it did not come up within {} s",
                    budget.as_secs_f64().ceil()
                );
            }
            return Err(CniError::new(code::TRY_AGAIN_LATER, msg, why));
        }
        clock.sleep(SOCKET_POLL.min(budget - spent));
    }
}

fn exchange(
    s: UnixStream,
    socket: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<Response, CniError> {
    let unreachable = |e| unreachable(socket, e);
    s.set_read_timeout(Some(timeout)).map_err(unreachable)?;
    s.set_write_timeout(Some(timeout)).map_err(unreachable)?;
    let mut line = serde_json::to_string(req)
        .map_err(|e| CniError::new(code::IO_FAILURE, "encoding request", e.to_string()))?;
    line.push('\n');
    (&s).write_all(line.as_bytes()).map_err(unreachable)?;
    let mut resp = String::new();
    BufReader::new(s)
        .read_line(&mut resp)
        .map_err(unreachable)?;
    serde_json::from_str(&resp).map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            "malformed answer from the agent",
            e.to_string(),
        )
    })
}

/// The agent runs as root, like the plugin: a process of another user serving the socket (one
/// that could bind it in a directory others can write to while the agent was down) is not the
/// agent, and must not be able to acknowledge registrations it never enforces.
fn check_peer(s: &UnixStream, socket: &Path) -> Result<(), CniError> {
    let peer = rustix::net::sockopt::socket_peercred(s).map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!("cannot tell who serves {}", socket.display()),
            e.to_string(),
        )
    })?;
    let me = rustix::process::geteuid();
    if peer.uid != me {
        return Err(CniError::new(
            code::IO_FAILURE,
            format!(
                "{} is served by a process of uid {} (pid {}), not of uid {}: not the septa agent",
                socket.display(),
                peer.uid.as_raw(),
                peer.pid.as_raw_nonzero(),
                me.as_raw()
            ),
            "the socket's directory must be root's and not writable by others; start septa-agent",
        ));
    }
    Ok(())
}

/// The host-side veth and pod addresses from `prevResult`, checked against the interfaces.
/// `driver_in_pod(ifname)` and `driver_on_host(ifname)` return an interface's driver name;
/// `is_peer(host)` tells whether host veth `host` is the peer of `CNI_IFNAME` in `CNI_NETNS`
/// (the agent checks this again itself).
pub fn endpoint_from_prev(
    env: &Env,
    prev: &Value,
    driver_in_pod: impl Fn(&str) -> std::io::Result<String>,
    driver_on_host: impl Fn(&str) -> std::io::Result<String>,
    is_peer: impl Fn(&str) -> bool,
) -> Result<(String, Vec<IpAddr>), CniError> {
    let bad = |m: String| CniError::new(code::INVALID_CONFIG, m, "");
    let ifaces = prev
        .get("interfaces")
        .and_then(|i| i.as_array())
        .ok_or_else(|| bad("prevResult has no interfaces".into()))?;
    let pod_driver = driver_in_pod(&env.ifname).map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!("cannot inspect {} in {}", env.ifname, env.netns),
            e.to_string(),
        )
    })?;
    if pod_driver != "veth" {
        return Err(CniError::new(
            code::NOT_A_VETH,
            format!("{} in the pod is a {pod_driver} interface, not a veth", env.ifname),
            "septa-cni attaches to the host side of a veth; for ipvlan/macvlan pods use the agent's cgroup mode",
        ));
    }
    let mut veths = Vec::new();
    for i in ifaces {
        let name = i.get("name").and_then(|n| n.as_str()).unwrap_or_default();
        let in_sandbox = i
            .get("sandbox")
            .and_then(|s| s.as_str())
            .is_some_and(|s| !s.is_empty());
        if !in_sandbox && !name.is_empty() && driver_on_host(name).is_ok_and(|d| d == "veth") {
            veths.push(name.to_owned());
        }
    }
    if veths.is_empty() {
        return Err(bad("prevResult has no host-side veth (is the previous plugin bridge, ptp or another veth CNI?)".into()));
    }
    // prevResult may list other pods' or the node's veths: the pod's is the peer of its own.
    let host = veths.iter().find(|v| is_peer(v)).cloned().ok_or_else(|| {
        bad(format!(
            "no host-side veth in prevResult ({}) is the peer of {} in {}",
            veths.join(", "),
            env.ifname,
            env.netns
        ))
    })?;
    let mut ips = Vec::new();
    for (n, ip) in prev
        .get("ips")
        .and_then(|i| i.as_array())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let addr = ip
            .get("address")
            .and_then(|a| a.as_str())
            .unwrap_or_default();
        let net: ipnetwork::IpNetwork = addr.parse().map_err(|_| {
            bad(format!(
                "prevResult.ips[{n}].address {addr:?} is not an address/prefix"
            ))
        })?;
        ips.push(net.ip());
    }
    if ips.is_empty() {
        return Err(bad("prevResult has no IP addresses".into()));
    }
    Ok((host, ips))
}

/// Labels from, in order: `runtimeConfig` capability `septa.dev/labels`, the conf's
/// `args.cni.labels`, CNI_ARGS `SEPTA_LABELS=k:v,k2:v2`. (CNI_ARGS
/// values may not contain `=`, which the reference plugins reject; `:` is in neither label
/// keys nor values, so it separates them unambiguously.)
pub fn labels(env: &Env, conf: &NetConf) -> Result<Option<BTreeMap<String, String>>, CniError> {
    if let Some(l) = conf
        .runtime_config
        .as_ref()
        .and_then(|r| r.get("septa.dev/labels"))
    {
        let m: BTreeMap<String, String> = serde_json::from_value(l.clone()).map_err(|e| {
            CniError::new(
                code::INVALID_CONFIG,
                "runtimeConfig septa.dev/labels must map strings to strings",
                e.to_string(),
            )
        })?;
        return Ok(Some(m));
    }
    if let Some(l) = conf.args.as_ref().and_then(|a| a.pointer("/cni/labels")) {
        let m: BTreeMap<String, String> = serde_json::from_value(l.clone()).map_err(|e| {
            CniError::new(
                code::INVALID_CONFIG,
                "args.cni.labels must map strings to strings",
                e.to_string(),
            )
        })?;
        return Ok(Some(m));
    }
    let Some(s) = env.args_map().get("SEPTA_LABELS").cloned() else {
        return Ok(None);
    };
    let mut m = BTreeMap::new();
    for kv in s.split(',').filter(|x| !x.is_empty()) {
        let (k, v) = kv.split_once(':').ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("SEPTA_LABELS entry {kv:?} is not key:value"),
                "",
            )
        })?;
        m.insert(k.to_owned(), v.to_owned());
    }
    Ok(Some(m))
}

/// Run one command. `Ok(Some(json))` is printed on stdout, `Ok(None)` prints nothing.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<Value>, (CniError, String)> {
    let fallback_version = LATEST.to_owned();
    match env.command.as_str() {
        "VERSION" => {
            return Ok(Some(
                json!({ "cniVersion": LATEST, "supportedVersions": SUPPORTED }),
            ))
        }
        "DEL" => {
            del(env, stdin);
            return Ok(None);
        }
        _ => {}
    }
    let conf = parse_conf(stdin).map_err(|e| (e, fallback_version.clone()))?;
    let v = conf.cni_version.clone();
    let fail = |e: CniError| (e, v.clone());
    let socket = conf.socket();
    let timeout = conf.timeout();
    match env.command.as_str() {
        "ADD" => {
            env.require("ADD").map_err(fail)?;
            let prev = conf.prev_result.clone().ok_or_else(|| fail(CniError::new(code::INVALID_CONFIG, "prevResult is required: septa-cni is a chained plugin and must follow bridge, ptp or another veth plugin", "")))?;
            let netns = PathBuf::from(&env.netns);
            let in_pod = |name: &str| -> std::io::Result<String> {
                let name = name.to_owned();
                hostnet::netns::in_netns(&netns, move || crate::ethtool::driver(&name))
                    .map_err(|e| std::io::Error::other(e.to_string()))?
            };
            let is_peer = |host: &str| {
                hostnet::netns::ifindex(host)
                    .is_ok_and(|i| hostnet::link::verify_veth_peer(i, &netns, &env.ifname).is_ok())
            };
            let (host_ifname, ips) =
                endpoint_from_prev(env, &prev, in_pod, crate::ethtool::driver, is_peer)
                    .map_err(fail)?;
            let args = env.args_map();
            let ep = Endpoint {
                container_id: env.container_id.clone(),
                netns: env.netns.clone(),
                ifname: env.ifname.clone(),
                host_ifname,
                namespace: args
                    .get("K8S_POD_NAMESPACE")
                    .cloned()
                    .unwrap_or_else(|| "default".into()),
                name: args
                    .get("K8S_POD_NAME")
                    .cloned()
                    .unwrap_or_else(|| env.container_id.chars().take(12).collect()),
                labels: labels(env, &conf).map_err(fail)?,
                ips,
                cgroup: None,
            };
            let resp = call_agent_waiting(&socket, &Request::Add(ep), timeout, conf.socket_wait())
                .map_err(fail)?;
            if !resp.ok {
                return Err(fail(CniError::new(
                    code::AGENT_REFUSED,
                    "the septa agent refused the endpoint",
                    resp.error,
                )));
            }
            if !resp.warning.is_empty() {
                eprintln!("septa-cni: warning: {}", resp.warning);
            }
            let mut out = prev;
            out["cniVersion"] = Value::String(v.clone());
            Ok(Some(out))
        }
        "CHECK" => {
            env.require("CHECK").map_err(fail)?;
            if conf.prev_result.is_none() {
                return Err(fail(CniError::new(
                    code::INVALID_CONFIG,
                    "prevResult is required for CHECK",
                    "",
                )));
            }
            let resp = call_agent_waiting(
                &socket,
                &Request::Check {
                    container_id: env.container_id.clone(),
                },
                timeout,
                conf.socket_wait(),
            )
            .map_err(fail)?;
            if resp.ok {
                Ok(None)
            } else {
                Err(fail(CniError::new(
                    code::CHECK_FAILED,
                    "endpoint check failed",
                    resp.error,
                )))
            }
        }
        "STATUS" => match call_agent(&socket, &Request::Status, timeout) {
            Ok(r) if r.ok => {
                if !r.warning.is_empty() {
                    eprintln!("septa-cni: warning: {}", r.warning);
                }
                Ok(None)
            }
            Ok(r) => Err(fail(CniError::new(
                code::NOT_AVAILABLE,
                "the septa agent is not ready",
                r.error,
            ))),
            Err(e) => Err(fail(CniError::new(code::NOT_AVAILABLE, e.msg, e.details))),
        },
        // Garbage collection (1.1): endpoints are removed by DEL and on agent start; nothing to do.
        "GC" => Ok(None),
        "" => Err(fail(CniError::new(
            code::INVALID_ENV,
            "CNI_COMMAND is not set",
            "",
        ))),
        other => Err(fail(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
            "expected ADD, DEL, CHECK, STATUS, GC or VERSION",
        ))),
    }
}

/// DEL never fails (the spec: complete a DEL even if resources are missing) and prints
/// nothing: whatever can be read of the configuration is used to tell the agent, best effort,
/// without waiting for it. Unknown keys, an unsupported version or no JSON at all change nothing.
fn del(env: &Env, stdin: &[u8]) {
    if env.container_id.is_empty() {
        return;
    }
    let conf: Value = serde_json::from_slice(stdin).unwrap_or(Value::Null);
    let socket = conf
        .get("agentSocket")
        .and_then(Value::as_str)
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from);
    let timeout = answer_timeout(conf.get("timeoutSeconds").and_then(Value::as_u64));
    let _ = call_agent(
        &socket,
        &Request::Del {
            container_id: env.container_id.clone(),
        },
        timeout,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_served_by_another_user_is_not_the_agent() {
        let dir = std::env::temp_dir().join(format!("septa-impostor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        let sock = dir.join("septa.sock");
        let (bound, ready) = std::sync::mpsc::channel();
        let server = {
            let sock = sock.clone();
            std::thread::spawn(move || {
                // This thread alone becomes uid 65534: the raw system calls, unlike setuid(3),
                // change only the calling thread's credentials, which listen(2) records.
                // SAFETY: plain system calls without pointers.
                unsafe {
                    assert_eq!(libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534), 0);
                    assert_eq!(libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534), 0);
                }
                let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
                bound.send(()).unwrap();
                // One client; it would be acknowledged as the agent acknowledges an ADD.
                let (s, _) = l.accept().unwrap();
                let mut line = String::new();
                let n = BufReader::new(&s).read_line(&mut line).unwrap_or(0);
                if n > 0 {
                    let _ = (&s).write_all(b"{\"ok\": true}\n");
                }
                n
            })
        };
        ready.recv().unwrap();
        let e = call_agent(&sock, &Request::Status, Duration::from_secs(5)).unwrap_err();
        assert!(e.msg.contains("uid 65534"), "{e:?}");
        assert_eq!(server.join().unwrap(), 0, "nothing was sent to it");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn env(cmd: &str) -> Env {
        Env {
            command: cmd.into(),
            container_id: "c1".into(),
            netns: "/run/netns/p".into(),
            ifname: "eth0".into(),
            args: "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;SEPTA_LABELS=app:web,tier:fe".into(),
        }
    }

    fn prev() -> Value {
        json!({"cniVersion": "1.0.0", "interfaces": [
            {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
            {"name": "veth1234", "mac": "aa:bb:cc:dd:ee:02"},
            {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "10.22.0.5/16", "gateway": "10.22.0.1", "interface": 2}]})
    }

    fn drivers(name: &str) -> std::io::Result<String> {
        Ok(match name {
            "cni0" => "bridge".into(),
            _ => "veth".into(),
        })
    }

    #[test]
    fn version_lists_0_3_to_1_1() {
        let out = run(&env("VERSION"), b"").unwrap().unwrap();
        assert_eq!(
            out["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        assert_eq!(out["cniVersion"], "1.1.0");
    }

    #[test]
    fn malformed_input_is_a_spec_error() {
        let (e, v) = run(&env("ADD"), b"{not json").unwrap_err();
        assert_eq!((e.code, v.as_str()), (code::DECODE_FAILURE, "1.1.0"));
        let (e, _) = run(
            &env("ADD"),
            br#"{"cniVersion": "0.2.0", "name": "n", "type": "septa-cni"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert!(e.details.contains("1.0.0"));
        let (e, v) = run(
            &env("ADD"),
            br#"{"cniVersion": "1.0.0", "name": "n", "type": "septa-cni"}"#,
        )
        .unwrap_err();
        assert_eq!((e.code, v.as_str()), (code::INVALID_CONFIG, "1.0.0"));
        assert!(e.msg.contains("prevResult"));
        let mut no_ns = env("ADD");
        no_ns.netns.clear();
        let (e, _) = run(
            &no_ns,
            br#"{"cniVersion": "1.0.0", "name": "n", "type": "septa-cni"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        let (e, _) = run(&env("FROB"), br#"{"cniVersion": "1.0.0"}"#).unwrap_err();
        assert!(e.msg.contains("FROB"));
        let j = CniError::new(7, "m", "d").to_json("1.0.0");
        assert_eq!(
            j,
            json!({"cniVersion": "1.0.0", "code": 7, "msg": "m", "details": "d"})
        );
    }

    #[test]
    fn a_cni_0_4_0_prev_result_is_read_like_1_0() {
        // 0.4.0 results carry a `version` per address; the rest is the same.
        let p = json!({"cniVersion": "0.4.0", "interfaces": [
            {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
            {"name": "veth1234", "mac": "aa:bb:cc:dd:ee:02"},
            {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/run/netns/p"}],
            "ips": [{"version": "4", "address": "10.22.0.5/16", "gateway": "10.22.0.1", "interface": 2}],
            "dns": {}});
        let (host, ips) = endpoint_from_prev(&env("ADD"), &p, drivers, drivers, |_| true).unwrap();
        assert_eq!(
            (host.as_str(), ips),
            ("veth1234", vec!["10.22.0.5".parse::<IpAddr>().unwrap()])
        );
        let conf = br#"{"cniVersion": "0.4.0", "name": "n", "type": "septa-cni", "agentSocket": "/nonexistent/septa.sock", "timeoutSeconds": 1}"#;
        assert!(
            run(&env("DEL"), conf).is_ok(),
            "DEL of a 0.4.0 network succeeds"
        );
    }

    #[test]
    fn host_veth_and_addresses_from_prev_result() {
        let any = |_: &str| true;
        let (host, ips) = endpoint_from_prev(&env("ADD"), &prev(), drivers, drivers, any).unwrap();
        assert_eq!(host, "veth1234", "the bridge itself is skipped");
        assert_eq!(ips, vec!["10.22.0.5".parse::<IpAddr>().unwrap()]);
        let e = endpoint_from_prev(&env("ADD"), &prev(), |_| Ok("macvlan".into()), drivers, any)
            .unwrap_err();
        assert_eq!(e.code, code::NOT_A_VETH);
        let mut p = prev();
        p["interfaces"] = json!([{"name": "eth0", "sandbox": "/run/netns/p"}]);
        assert!(endpoint_from_prev(&env("ADD"), &p, drivers, drivers, any)
            .unwrap_err()
            .msg
            .contains("no host-side veth"));
        let mut p = prev();
        p["ips"] = json!([{"address": "banana"}]);
        assert!(endpoint_from_prev(&env("ADD"), &p, drivers, drivers, any)
            .unwrap_err()
            .msg
            .contains("banana"));
        // Several host veths: the pod's peer is chosen; none of them: refused.
        let mut p = prev();
        p["interfaces"]
            .as_array_mut()
            .unwrap()
            .insert(1, json!({"name": "vethother", "mac": "aa:bb:cc:dd:ee:04"}));
        let (host, _) =
            endpoint_from_prev(&env("ADD"), &p, drivers, drivers, |v| v == "veth1234").unwrap();
        assert_eq!(host, "veth1234");
        let e = endpoint_from_prev(&env("ADD"), &p, drivers, drivers, |_| false).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("vethother, veth1234"), "{e:?}");
    }

    #[test]
    fn labels_from_args() {
        let conf = parse_conf(br#"{"cniVersion": "1.0.0"}"#).unwrap();
        let l = labels(&env("ADD"), &conf).unwrap().unwrap();
        assert_eq!((l["app"].as_str(), l["tier"].as_str()), ("web", "fe"));
        let mut bad = env("ADD");
        bad.args = "SEPTA_LABELS=app=web".into();
        assert!(labels(&bad, &conf).is_err());
        let rc = parse_conf(br#"{"cniVersion": "1.0.0", "runtimeConfig": {"septa.dev/labels": {"app": "db"}}, "args": {"cni": {"labels": {"app": "x"}}}}"#).unwrap();
        assert_eq!(
            labels(&env("ADD"), &rc).unwrap().unwrap()["app"],
            "db",
            "runtimeConfig first"
        );
        let bad_rc = parse_conf(
            br#"{"cniVersion": "1.0.0", "runtimeConfig": {"septa.dev/labels": ["app"]}}"#,
        )
        .unwrap();
        assert!(labels(&env("ADD"), &bad_rc).is_err());
    }

    #[test]
    fn del_succeeds_without_agent_and_add_says_try_later() {
        let conf = br#"{"cniVersion": "1.0.0", "agentSocket": "/nonexistent/septa.sock", "timeoutSeconds": 1}"#;
        assert_eq!(run(&env("DEL"), conf).unwrap(), None);
        let (e, _) = run(&env("STATUS"), conf).unwrap_err();
        assert_eq!(e.code, code::NOT_AVAILABLE);
        let r = call_agent(
            Path::new("/nonexistent/septa.sock"),
            &Request::Status,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert_eq!(r.code, code::TRY_AGAIN_LATER);
    }

    #[test]
    fn unknown_keys_are_refused_naming_them_on_add_check_and_status() {
        let conf = br#"{"cniVersion": "1.0.0", "name": "n", "type": "septa-cni", "agentSockte": "/run/x.sock", "prevResult": {}}"#;
        for cmd in ["ADD", "CHECK", "STATUS"] {
            let (e, v) = run(&env(cmd), conf).unwrap_err();
            assert_eq!(
                (e.code, v.as_str()),
                (code::INVALID_CONFIG, "1.1.0"),
                "{cmd}"
            );
            assert!(e.msg.contains("\"agentSockte\""), "{e:?}");
            assert!(e.msg.contains("did you mean \"agentSocket\""), "{e:?}");
        }
        let e =
            parse_conf(br#"{"cniVersion": "1.0.0", "Timeoutseconds": 3, "bogus": 1}"#).unwrap_err();
        assert!(e.msg.contains("Timeoutseconds") && e.msg.contains("timeoutSeconds"));
        assert!(e.details.contains("Timeoutseconds, bogus"), "{e:?}");
        // Everything the spec lets a runtime pass, and septa's own keys, is accepted.
        let all = br#"{"cniVersion": "1.1.0", "name": "n", "type": "septa-cni",
            "capabilities": {"septa.dev/labels": true}, "runtimeConfig": {}, "args": {},
            "prevResult": {}, "ipMasq": false, "ipam": {}, "dns": {}, "cni.dev/attachments": [],
            "agentSocket": "/run/septa/agent.sock", "timeoutSeconds": 5, "socketWaitSeconds": 0}"#;
        let c = parse_conf(all).unwrap();
        assert_eq!(c.socket_wait(), Duration::ZERO);
        assert_eq!(c.timeout(), Duration::from_secs(5));
        let e = parse_conf(b"[1]").unwrap_err();
        assert_eq!(e.code, code::DECODE_FAILURE);
        let e = parse_conf(br#"{"cniVersion": "1.0.0", "socketWaitSeconds": -1}"#).unwrap_err();
        assert_eq!(e.code, code::DECODE_FAILURE);
        assert!(!near("agentSocket", "timeoutSeconds") && near("agentSocket", "agentSockt"));
    }

    #[test]
    fn socket_wait_defaults_to_30_s_and_is_capped() {
        let c = parse_conf(br#"{"cniVersion": "1.0.0"}"#).unwrap();
        assert_eq!(c.socket_wait(), DEFAULT_SOCKET_WAIT);
        let c = parse_conf(br#"{"cniVersion": "1.0.0", "socketWaitSeconds": 100000}"#).unwrap();
        assert_eq!(c.socket_wait(), MAX_SOCKET_WAIT);
        let c =
            parse_conf(br#"{"cniVersion": "1.0.0", "socketWaitSeconds": 18446744073709551615}"#)
                .unwrap();
        assert_eq!(c.socket_wait(), MAX_SOCKET_WAIT);
    }

    #[test]
    fn del_never_fails_and_prints_nothing() {
        let garbage: [&[u8]; 8] = [
            b"",
            b"{not json",
            b"[]",
            br#"{"cniVersion": "0.1.0"}"#,
            br#"{"cniVersion": 7, "agentSocket": 5, "timeoutSeconds": "x"}"#,
            br#"{"cniVersion": "1.0.0", "agentSockte": "/x", "agentSocket": "/nonexistent/s.sock", "timeoutSeconds": 1}"#,
            br#"{"cniVersion": "9.9.9", "agentSocket": "/nonexistent/s.sock", "timeoutSeconds": 1, "socketWaitSeconds": 300}"#,
            b"\xff\xfe",
        ];
        let mut no_env = env("DEL");
        no_env.container_id.clear();
        no_env.ifname.clear();
        no_env.netns.clear();
        for conf in garbage {
            let started = Instant::now();
            assert_eq!(run(&env("DEL"), conf).unwrap(), None);
            assert_eq!(run(&no_env, conf).unwrap(), None);
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "DEL does not wait"
            );
        }
    }

    /// Time that passes only when slept, with a record of the sleeps.
    struct FakeClock {
        now: Duration,
        sleeps: Vec<Duration>,
    }

    impl Clock for FakeClock {
        fn elapsed(&self) -> Duration {
            self.now
        }
        fn sleep(&mut self, d: Duration) {
            self.now += d;
            self.sleeps.push(d);
        }
    }

    #[test]
    fn waiting_retries_until_the_agent_is_up_and_never_sleeps_past_the_budget() {
        let sock = Path::new("/run/septa/agent.sock");
        let mut clock = FakeClock {
            now: Duration::ZERO,
            sleeps: vec![],
        };
        let mut tries = 0;
        let got = wait_for_agent(sock, Duration::from_secs(30), &mut clock, || {
            tries += 1;
            if tries < 4 {
                Attempt::NotUp("connection refused".into())
            } else {
                Attempt::Done(Ok(tries))
            }
        });
        assert_eq!(got.unwrap(), 4);
        assert_eq!(clock.sleeps, vec![SOCKET_POLL; 3]);

        // Never up: the budget is spent exactly, then code 11 naming it and the socket.
        let mut clock = FakeClock {
            now: Duration::ZERO,
            sleeps: vec![],
        };
        let mut tries = 0;
        let e = wait_for_agent::<()>(sock, Duration::from_millis(1_100), &mut clock, || {
            tries += 1;
            Attempt::NotUp("No such file or directory".into())
        })
        .unwrap_err();
        assert_eq!(e.code, code::TRY_AGAIN_LATER);
        assert_eq!(
            e.msg,
            "septa agent not reachable at /run/septa/agent.sock: it did not come up within 2 s"
        );
        assert_eq!(e.details, "No such file or directory");
        assert_eq!(clock.now, Duration::from_millis(1_100));
        assert_eq!(clock.sleeps.last(), Some(&Duration::from_millis(100)));
        assert_eq!(tries, 7);

        // A final failure (an impostor serving the socket) is not waited on.
        let mut clock = FakeClock {
            now: Duration::ZERO,
            sleeps: vec![],
        };
        let e = wait_for_agent::<()>(sock, Duration::from_secs(30), &mut clock, || {
            Attempt::Done(Err(CniError::new(code::IO_FAILURE, "impostor", "")))
        })
        .unwrap_err();
        assert_eq!((e.code, clock.sleeps.len()), (code::IO_FAILURE, 0));

        // No budget: one try, the old message.
        let e = wait_for_agent::<()>(sock, Duration::ZERO, &mut clock, || {
            Attempt::NotUp("refused".into())
        })
        .unwrap_err();
        assert_eq!(e.msg, "septa agent not reachable at /run/septa/agent.sock");
    }

    #[test]
    fn check_waits_for_a_socket_that_never_appears_then_says_try_again_later() {
        let conf = br#"{"cniVersion": "1.0.0", "name": "n", "type": "septa-cni",
            "agentSocket": "/nonexistent/septa/agent.sock", "timeoutSeconds": 1,
            "socketWaitSeconds": 1, "prevResult": {}}"#;
        let started = Instant::now();
        let (e, v) = run(&env("CHECK"), conf).unwrap_err();
        let took = started.elapsed();
        assert_eq!(
            (e.code, v.as_str()),
            (code::TRY_AGAIN_LATER, "1.0.0"),
            "{e:?}"
        );
        assert_eq!(
            e.msg,
            "septa agent not reachable at /nonexistent/septa/agent.sock: it did not come up within 1 s"
        );
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }
}
