//! A minimal CNI runtime, as a container runtime would be: runs a network's plugin chain per
//! the CNI spec (CNI_* environment, configuration with `prevResult` on stdin), with every
//! plugin executed inside the node's network namespace.

use std::{
    io::Write,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::{json, Value};

/// A plugin's failure: its CNI error, or what it printed.
#[derive(Debug, Clone)]
pub struct PluginError {
    pub plugin: String,
    pub code: Option<u64>,
    pub msg: String,
    pub output: String,
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: code {:?}: {} ({})",
            self.plugin,
            self.code,
            self.msg,
            self.output.trim()
        )
    }
}

impl std::error::Error for PluginError {}

/// One pod's attachment to the network.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub args: String,
    /// The chain's final result.
    pub result: Value,
}

/// A network (a conflist) and where to run its plugins.
pub struct Runtime {
    /// The node's network namespace.
    pub node: PathBuf,
    /// Directories with plugin binaries.
    pub cni_path: Vec<PathBuf>,
    /// The conflist: `{"cniVersion", "name", "plugins": [...]}`.
    pub network: Value,
    /// When set, the network is read from this directory before every command instead, as
    /// a runtime reads its CNI configuration directory: the first `.conf`, `.conflist` or
    /// `.json` file by name (libcni's order).
    pub conf_dir: Option<PathBuf>,
}

/// The network file a runtime uses in `dir`: the first `.conf`, `.conflist` or `.json` file
/// by name.
pub fn first_network_file(dir: &Path) -> Result<PathBuf, PluginError> {
    let err = |msg: String| PluginError {
        plugin: "runtime".into(),
        code: None,
        msg,
        output: String::new(),
    };
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| err(format!("{}: {e}", dir.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|x| x == "conf" || x == "conflist" || x == "json")
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .next()
        .ok_or_else(|| err(format!("no network configuration in {}", dir.display())))
}

impl Runtime {
    /// The network the next command runs: [`Runtime::network`], or the conf dir's first file.
    pub fn current_network(&self) -> Result<Value, PluginError> {
        let Some(dir) = &self.conf_dir else {
            return Ok(self.network.clone());
        };
        let path = first_network_file(dir)?;
        let bytes = std::fs::read(&path).map_err(|e| PluginError {
            plugin: "runtime".into(),
            code: None,
            msg: format!("{}: {e}", path.display()),
            output: String::new(),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| PluginError {
            plugin: "runtime".into(),
            code: None,
            msg: format!("{}: not JSON: {e}", path.display()),
            output: String::new(),
        })
    }

    fn plugins(network: &Value) -> Vec<Value> {
        network["plugins"].as_array().cloned().unwrap_or_default()
    }

    /// Run one plugin with `command`; returns its stdout JSON (if any).
    pub fn exec(
        &self,
        plugin: &Value,
        command: &str,
        a: &Attachment,
        prev: Option<&Value>,
    ) -> Result<Option<Value>, PluginError> {
        let network = self.current_network()?;
        self.exec_in(&network, plugin, command, a, prev)
    }

    /// Run one plugin of `network` with `command`.
    fn exec_in(
        &self,
        network: &Value,
        plugin: &Value,
        command: &str,
        a: &Attachment,
        prev: Option<&Value>,
    ) -> Result<Option<Value>, PluginError> {
        let ty = plugin["type"].as_str().unwrap_or_default().to_owned();
        let bin = self
            .cni_path
            .iter()
            .map(|d| d.join(&ty))
            .find(|p| p.exists())
            .ok_or_else(|| PluginError {
                plugin: ty.clone(),
                code: None,
                msg: "plugin binary not found in CNI_PATH".into(),
                output: String::new(),
            })?;
        let mut conf = plugin.clone();
        conf["cniVersion"] = network["cniVersion"].clone();
        conf["name"] = network["name"].clone();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        let node = std::fs::File::open(&self.node).map_err(|e| PluginError {
            plugin: ty.clone(),
            code: None,
            msg: format!("node netns: {e}"),
            output: String::new(),
        })?;
        let node_fd = node.as_raw_fd();
        let path = self
            .cni_path
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &a.container_id)
            .env("CNI_NETNS", &a.netns)
            .env("CNI_IFNAME", &a.ifname)
            .env("CNI_ARGS", &a.args)
            .env("CNI_PATH", path)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: setns is async-signal-safe; the fd stays open until after spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(node_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| PluginError {
            plugin: ty.clone(),
            code: None,
            msg: format!("spawn: {e}"),
            output: String::new(),
        })?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(conf.to_string().as_bytes())
            .map_err(|e| PluginError {
                plugin: ty.clone(),
                code: None,
                msg: format!("stdin: {e}"),
                output: String::new(),
            })?;
        let out = child.wait_with_output().map_err(|e| PluginError {
            plugin: ty.clone(),
            code: None,
            msg: format!("wait: {e}"),
            output: String::new(),
        })?;
        drop(node);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let json: Option<Value> = serde_json::from_str(&stdout).ok();
        if !out.status.success() {
            return Err(PluginError {
                plugin: ty,
                code: json.as_ref().and_then(|j| j["code"].as_u64()),
                msg: json
                    .as_ref()
                    .and_then(|j| j["msg"].as_str())
                    .unwrap_or_default()
                    .to_owned(),
                output: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
            });
        }
        Ok(json)
    }

    /// ADD through the whole chain; each plugin gets the previous one's result.
    pub fn add(
        &self,
        container_id: &str,
        netns: &Path,
        ifname: &str,
        args: &str,
    ) -> Result<Attachment, PluginError> {
        let mut a = Attachment {
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: ifname.into(),
            args: args.into(),
            result: json!(null),
        };
        let network = self.current_network()?;
        let mut prev: Option<Value> = None;
        for p in Self::plugins(&network) {
            prev = self.exec_in(&network, &p, "ADD", &a, prev.as_ref())?;
        }
        a.result = prev.unwrap_or(json!(null));
        Ok(a)
    }

    /// CHECK through the chain with the ADD result.
    pub fn check(&self, a: &Attachment) -> Result<(), PluginError> {
        let network = self.current_network()?;
        for p in Self::plugins(&network) {
            self.exec_in(&network, &p, "CHECK", a, Some(&a.result))?;
        }
        Ok(())
    }

    /// DEL through the chain in reverse order.
    pub fn del(&self, a: &Attachment) -> Result<(), PluginError> {
        let network = self.current_network()?;
        for p in Self::plugins(&network).iter().rev() {
            self.exec_in(&network, p, "DEL", a, Some(&a.result))?;
        }
        Ok(())
    }
}

/// A bridge + host-local + septa-cni network, as the demo and tests use it.
pub fn septa_network(
    name: &str,
    bridge: &str,
    subnet: &str,
    ipam_dir: &Path,
    socket: &Path,
) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": ipam_dir}},
            {"type": "septa-cni", "agentSocket": socket, "timeoutSeconds": 15, "socketWaitSeconds": 2}
        ]
    })
}
