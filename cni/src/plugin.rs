//! The plugin's logic, separated from process I/O so it is tested with plain values.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use serde_json::{json, Value};

use api::protocol::{Endpoint, Request, Response, DEFAULT_SOCKET};

/// CNI versions this plugin speaks.
pub const SUPPORTED: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
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

/// The plugin's network configuration (the keys it reads; others pass through).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
    /// Seconds to wait for the agent.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
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

/// Parse stdin; returns the conf and the version to report errors with.
pub fn parse_conf(stdin: &[u8]) -> Result<NetConf, CniError> {
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            "cannot decode the network configuration",
            e.to_string(),
        )
    })?;
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
/// process serving the socket runs as this plugin's user (see [`check_peer`]).
pub fn call_agent(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, CniError> {
    let unreachable = |e: std::io::Error| {
        CniError::new(
            code::TRY_AGAIN_LATER,
            format!("septa agent not reachable at {}", socket.display()),
            e.to_string(),
        )
    };
    let mut s = UnixStream::connect(socket).map_err(unreachable)?;
    check_peer(&s, socket)?;
    s.set_read_timeout(Some(timeout)).map_err(unreachable)?;
    s.set_write_timeout(Some(timeout)).map_err(unreachable)?;
    let mut line = serde_json::to_string(req)
        .map_err(|e| CniError::new(code::IO_FAILURE, "encoding request", e.to_string()))?;
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(unreachable)?;
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
    if env.command == "VERSION" {
        return Ok(Some(
            json!({ "cniVersion": LATEST, "supportedVersions": SUPPORTED }),
        ));
    }
    let conf = parse_conf(stdin).map_err(|e| (e, fallback_version.clone()))?;
    let v = conf.cni_version.clone();
    let fail = |e: CniError| (e, v.clone());
    let socket = conf
        .agent_socket
        .clone()
        .unwrap_or_else(|| DEFAULT_SOCKET.into());
    let timeout = Duration::from_secs(conf.timeout_seconds.unwrap_or(10).clamp(1, 300));
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
            let resp = call_agent(&socket, &Request::Add(ep), timeout).map_err(fail)?;
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
        "DEL" => {
            if !env.container_id.is_empty() {
                // Best effort: DEL must succeed even when the agent is down.
                let _ = call_agent(
                    &socket,
                    &Request::Del {
                        container_id: env.container_id.clone(),
                    },
                    timeout,
                );
            }
            Ok(None)
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
            let resp = call_agent(
                &socket,
                &Request::Check {
                    container_id: env.container_id.clone(),
                },
                timeout,
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
    fn version_lists_0_4_1_0_and_1_1() {
        let out = run(&env("VERSION"), b"").unwrap().unwrap();
        assert_eq!(out["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
        assert_eq!(out["cniVersion"], "1.1.0");
    }

    #[test]
    fn malformed_input_is_a_spec_error() {
        let (e, v) = run(&env("ADD"), b"{not json").unwrap_err();
        assert_eq!((e.code, v.as_str()), (code::DECODE_FAILURE, "1.1.0"));
        let (e, _) = run(
            &env("ADD"),
            br#"{"cniVersion": "0.3.1", "name": "n", "type": "septa-cni"}"#,
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
}
