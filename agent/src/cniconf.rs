//! septa's entry in the node's CNI configuration, kept as a reconciler: the desired bytes of
//! one file are a pure function of the directory as it is now and the options
//! (`cni::conflist` splices septa's plugin into the primary network's conflist, or checks the
//! user's own conflist), compared with the file, and written only when they differ.
//!
//! Phases: [`CniConf::new`] reads and checks what to install, before the agent changes
//! anything; [`CniConf::reconcile`] runs once the agent enforces a good state and again
//! whenever [`watch`] sees the directory change (a primary CNI that rewrites its file drops
//! septa's entry; the next reconcile puts it back); [`CniConf::uninstall`] removes exactly
//! septa's entry, on `helm uninstall` or `--cni-uninstall`.
//!
//! Fails closed: the entry stays when the agent stops or restarts. A runtime that runs
//! septa-cni while no agent serves the socket gets a retryable error, and the pod waits;
//! removing the entry instead would start pods that nothing enforces.
//!
//! Writes are atomic (a hidden temporary file in the same directory, fsync, rename, fsync of
//! the directory), so a runtime never reads half a file, and keep the file's mode.

use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use cni::conflist::{self, Splice};
use tracing::{error, info, warn};

use crate::config::{CniMode, Config};

/// How long septa-cni waits for one answer of the agent (its `timeoutSeconds`).
const PLUGIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// septa's entry in the CNI configuration directory, and what the agent knows of it.
pub struct CniConf {
    mode: CniMode,
    dir: PathBuf,
    /// splice: the primary network's file name, when the options fix it.
    network: Option<String>,
    /// own-file: the file name and the conflist to install.
    own: Option<(String, Vec<u8>)>,
    /// splice: septa's plugin object.
    entry: serde_json::Value,
    /// Whether the agent enforces a good state yet: nothing is written before.
    armed: bool,
    state: api::protocol::CniStatus,
}

/// What one reconcile did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `--cni-mode off`, or the agent is not enforcing yet.
    Idle,
    /// The file already carried septa's entry.
    Unchanged(PathBuf),
    /// The file was written.
    Written(PathBuf),
}

impl CniConf {
    /// Read and check the own file (own-file mode); nothing is written.
    pub fn new(cfg: &Config) -> Result<Self, String> {
        let own = match (&cfg.cni_mode, &cfg.cni_own_file) {
            (CniMode::OwnFile, Some(path)) => {
                let bytes = fs::read(path)
                    .map_err(|e| format!("--cni-own-file {}: {e}", path.display()))?;
                conflist::check_own(&bytes)
                    .map_err(|e| format!("--cni-own-file {}: {e}", path.display()))?;
                Some((cfg.cni_file_name.clone(), bytes))
            }
            _ => None,
        };
        let mode = match cfg.cni_mode {
            CniMode::Off => "off",
            CniMode::Splice => "splice",
            CniMode::OwnFile => "own-file",
        };
        Ok(CniConf {
            mode: cfg.cni_mode,
            dir: cfg.cni_conf_dir.clone(),
            network: cfg.cni_network.clone(),
            own,
            entry: conflist::entry(&cfg.socket, cfg.cni_socket_wait, PLUGIN_TIMEOUT),
            armed: false,
            state: api::protocol::CniStatus {
                mode: mode.into(),
                error: (cfg.cni_mode != CniMode::Off)
                    .then(|| "not written until the agent enforces a good state".to_owned()),
                ..Default::default()
            },
        })
    }

    /// Whether the agent manages the CNI configuration at all.
    pub fn enabled(&self) -> bool {
        self.mode != CniMode::Off
    }

    /// The directory [`watch`] should watch.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What `septa status` shows.
    pub fn status(&self) -> api::protocol::CniStatus {
        self.state.clone()
    }

    /// Whether reconciles write (the agent enforced a good state).
    pub fn armed(&self) -> bool {
        self.armed
    }

    /// The agent enforces a good state: from now on reconciles write. Temporary files a
    /// crashed agent left behind are removed first.
    pub fn arm(&mut self) {
        if !self.armed && self.enabled() {
            for name in list(&self.dir).unwrap_or_default() {
                if conflist::is_temp(&name) {
                    let _ = fs::remove_file(self.dir.join(&name));
                }
            }
        }
        self.armed = true;
    }

    /// Make the file carry septa's entry; write it only when its bytes differ. A problem
    /// (no primary network yet, a malformed primary file) is logged once per change of the
    /// problem, counted, and kept for `septa status`; the file is left as it is.
    pub fn reconcile(&mut self) -> Outcome {
        if !self.enabled() || !self.armed {
            return Outcome::Idle;
        }
        let result = match self.mode {
            CniMode::Off => return Outcome::Idle,
            CniMode::Splice => self.reconcile_splice(),
            CniMode::OwnFile => self.reconcile_own(),
        };
        match result {
            Ok(outcome) => {
                let path = match &outcome {
                    Outcome::Written(p) | Outcome::Unchanged(p) => p.clone(),
                    Outcome::Idle => return outcome,
                };
                if let Outcome::Written(p) = &outcome {
                    info!(file = %p.display(), mode = %self.state.mode, "septa's CNI entry written");
                    metrics::counter!("septa_cni_writes_total").increment(1);
                }
                self.state.file = Some(path.display().to_string());
                self.state.present = true;
                self.state.error = None;
                metrics::gauge!("septa_cni_entry_present").set(1.0);
                outcome
            }
            Err((file, why)) => {
                if self.state.error.as_deref() != Some(why.as_str()) {
                    error!(dir = %self.dir.display(), file = ?file, error = %why, "septa's CNI entry is not in place; the file is left as it is");
                    metrics::counter!("septa_cni_errors_total").increment(1);
                }
                self.state.file = file.map(|f| f.display().to_string());
                self.state.present = false;
                self.state.error = Some(why);
                metrics::gauge!("septa_cni_entry_present").set(0.0);
                Outcome::Idle
            }
        }
    }

    fn reconcile_splice(&self) -> Result<Outcome, (Option<PathBuf>, String)> {
        let names = list(&self.dir).map_err(|e| (None, e))?;
        let name = conflist::choose_primary(&names, self.network.as_deref())
            .map_err(|e| (None, format!("{}: {e}", self.dir.display())))?;
        let path = self.dir.join(&name);
        runtime_uses(&names, &name).map_err(|e| (Some(path.clone()), e))?;
        let bytes = read_network(&path).map_err(|e| (Some(path.clone()), e))?;
        match conflist::splice(&bytes, &self.entry)
            .map_err(|e| (Some(path.clone()), e.to_string()))?
        {
            Splice::Unchanged => Ok(Outcome::Unchanged(path)),
            Splice::Write(new) => {
                replace(&self.dir, &name, &new, Some(&bytes))
                    .map_err(|e| (Some(path.clone()), e))?;
                Ok(Outcome::Written(path))
            }
        }
    }

    fn reconcile_own(&self) -> Result<Outcome, (Option<PathBuf>, String)> {
        let Some((name, want)) = &self.own else {
            return Ok(Outcome::Idle);
        };
        let path = self.dir.join(name);
        let mut names = list(&self.dir).map_err(|e| (Some(path.clone()), e))?;
        names.push(name.clone());
        runtime_uses(&names, name).map_err(|e| (Some(path.clone()), e))?;
        let have = match read_network(&path) {
            Ok(have) if &have == want => return Ok(Outcome::Unchanged(path)),
            Ok(have) => Some(have),
            Err(_) if !path.exists() && fs::symlink_metadata(&path).is_err() => None,
            Err(e) => return Err((Some(path), e)),
        };
        replace(&self.dir, name, want, have.as_deref()).map_err(|e| (Some(path.clone()), e))?;
        Ok(Outcome::Written(path))
    }

    /// Remove septa's entry: splice mode takes septa's plugin out of every network file that
    /// has it (leaving the bytes the primary CNI wrote); own-file mode removes the own file
    /// when it is still the one septa installed. Returns the files changed.
    pub fn uninstall(&mut self) -> Result<Vec<PathBuf>, String> {
        let mut changed = Vec::new();
        match self.mode {
            CniMode::Off => {}
            CniMode::Splice => {
                let mut problems = Vec::new();
                for name in list(&self.dir)?
                    .into_iter()
                    .filter(|n| conflist::is_conf_file(n))
                {
                    let path = self.dir.join(&name);
                    let Ok(bytes) = fs::read(&path) else { continue };
                    match conflist::unsplice(&bytes) {
                        Ok(Some(without)) => {
                            match replace(&self.dir, &name, &without, Some(&bytes)) {
                                Ok(()) => changed.push(path),
                                Err(e) => problems.push(format!("{}: {e}", path.display())),
                            }
                        }
                        Ok(None) => {}
                        // Not a conflist septa could have written to: not septa's to change.
                        Err(_) => {}
                    }
                }
                if !problems.is_empty() {
                    return Err(problems.join("; "));
                }
            }
            CniMode::OwnFile => {
                if let Some((name, want)) = &self.own {
                    let path = self.dir.join(name);
                    match fs::read(&path) {
                        Ok(have) if &have == want => {
                            fs::remove_file(&path)
                                .map_err(|e| format!("{}: {e}", path.display()))?;
                            sync_dir(&self.dir);
                            changed.push(path);
                        }
                        Ok(_) => {
                            warn!(file = %path.display(), "the own CNI file was changed by someone else; left in place")
                        }
                        Err(_) => {}
                    }
                }
            }
        }
        self.state.present = false;
        self.state.error = Some("removed (uninstall)".into());
        metrics::gauge!("septa_cni_entry_present").set(0.0);
        Ok(changed)
    }
}

/// Largest network configuration file read: real ones are a few hundred bytes.
const MAX_NETWORK_FILE: u64 = 1 << 20;

/// Read a network file, refusing a symbolic link (writing septa's entry would replace the
/// link with a copy, and the file it points to would change unseen) and a file over
/// [`MAX_NETWORK_FILE`].
fn read_network(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let meta = fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if meta.file_type().is_symlink() {
        let to = fs::read_link(path)
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        return Err(format!(
            "is a symbolic link (to {to}): septa does not write through links; name the file it points to, or use own-file mode"
        ));
    }
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_NETWORK_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_NETWORK_FILE {
        return Err(format!(
            "larger than {MAX_NETWORK_FILE} bytes: not a network configuration"
        ));
    }
    Ok(bytes)
}

/// `name` must be the file the runtime loads (the first network file by name): an entry in
/// any other file is never run, and `septa status` must not call it present.
fn runtime_uses(names: &[String], name: &str) -> Result<(), String> {
    match conflist::choose_primary(names, None) {
        Ok(first) if first == name => Ok(()),
        Ok(first) => Err(format!(
            "the runtime uses {first}, the first network file by name, not {name}: pods would not run septa-cni"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// The network configuration files of `dir` (file names only; libcni reads no subdirectory).
fn list(dir: &Path) -> Result<Vec<String>, String> {
    let rd = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut names = Vec::new();
    for entry in rd.flatten() {
        // Links count as the runtime follows them (a ConfigMap volume is made of links).
        if fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Replace `dir/name` with `bytes` atomically, keeping the file's mode (0644 for a new one).
/// `was` is what the file held when `bytes` were made from it: if it holds something else
/// just before the rename (the primary CNI rewrote it meanwhile), nothing is replaced, and
/// the change's own notification brings the next reconcile.
fn replace(dir: &Path, name: &str, bytes: &[u8], was: Option<&[u8]>) -> Result<(), String> {
    let path = dir.join(name);
    let mode = fs::metadata(&path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    // Hidden, so a runtime listing the directory meanwhile never takes it for a network.
    let tmp = dir.join(format!(".{name}.septa-tmp"));
    let write = || -> std::io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        let now = fs::read(&path).ok();
        if now.as_deref() != was {
            return Err(std::io::Error::other(
                "the file changed while septa was writing it; taken up again at the next change",
            ));
        }
        fs::rename(&tmp, &path)?;
        Ok(())
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("writing {}: {e}", path.display())
    })?;
    sync_dir(dir);
    Ok(())
}

/// Make a rename or removal in `dir` durable (best effort: the file itself is already whole).
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Watch `dir` on a thread of its own and send `()` whenever a file in it is written,
/// created, moved or removed. A directory that does not exist yet (the primary CNI is not
/// installed) is looked for again every second; so is one that was removed.
/// The thread ends when the receiver is gone (the agent stopped).
pub fn watch(dir: PathBuf, tx: tokio::sync::mpsc::UnboundedSender<()>) {
    let spawned = std::thread::Builder::new()
        .name("cni-watch".into())
        .spawn(move || watch_loop(&dir, &tx));
    if let Err(e) = spawned {
        warn!(error = %e, "cannot watch the CNI configuration directory; the agent checks it every 10 s instead");
    }
}

fn watch_loop(dir: &Path, tx: &tokio::sync::mpsc::UnboundedSender<()>) {
    use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
    let mut failing = false;
    loop {
        let watched = inotify::init(CreateFlags::CLOEXEC).and_then(|fd| {
            inotify::add_watch(
                &fd,
                dir,
                WatchFlags::CLOSE_WRITE
                    | WatchFlags::CREATE
                    | WatchFlags::DELETE
                    | WatchFlags::MOVED_FROM
                    | WatchFlags::MOVED_TO
                    | WatchFlags::MODIFY
                    | WatchFlags::DELETE_SELF
                    | WatchFlags::MOVE_SELF,
            )
            .map(|_| fd)
        });
        let fd = match watched {
            Ok(fd) => fd,
            Err(e) => {
                if tx.is_closed() {
                    return;
                }
                if !failing {
                    warn!(dir = %dir.display(), error = %e, "cannot watch the CNI configuration directory; retrying every second, and the agent checks it every 10 s meanwhile");
                    metrics::counter!("septa_cni_errors_total").increment(1);
                    failing = true;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
                continue;
            }
        };
        if failing {
            info!(dir = %dir.display(), "watching the CNI configuration directory");
            failing = false;
        }
        // The directory may have changed before the watch began.
        if tx.send(()).is_err() {
            return;
        }
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut reader = inotify::Reader::new(&fd, &mut buf);
        loop {
            match reader.next() {
                Ok(ev) => {
                    let gone = ev.events().intersects(
                        ReadFlags::DELETE_SELF | ReadFlags::MOVE_SELF | ReadFlags::IGNORED,
                    );
                    if tx.send(()).is_err() {
                        return;
                    }
                    if gone {
                        break;
                    }
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    const PRIMARY: &str = "{\n  \"cniVersion\": \"1.0.0\",\n  \"name\": \"cbr0\",\n  \"plugins\": [\n    {\n      \"type\": \"flannel\",\n      \"delegate\": {\n        \"hairpinMode\": true,\n        \"isDefaultGateway\": true\n      }\n    },\n    {\n      \"type\": \"portmap\",\n      \"capabilities\": {\n        \"portMappings\": true\n      }\n    }\n  ]\n}\n";

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("septa-cniconf-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn conf(args: &[&str]) -> CniConf {
        let cfg = Config::load(["septa-agent"].iter().chain(args).copied())
            .unwrap_or_else(|e| panic!("{e:?}"));
        CniConf::new(&cfg).unwrap()
    }

    fn septa_last(bytes: &[u8]) -> bool {
        let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        v["plugins"].as_array().unwrap().last().unwrap()["type"] == "septa-cni"
    }

    #[test]
    fn splice_writes_once_armed_never_twice_and_uninstalls_exactly() {
        let dir = tmp("splice");
        let file = dir.join("10-flannel.conflist");
        fs::write(&file, PRIMARY).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        let d = dir.display().to_string();
        let mut c = conf(&["--cni-mode", "splice", "--cni-conf-dir", &d]);
        assert_eq!(c.reconcile(), Outcome::Idle, "nothing before a good state");
        assert_eq!(fs::read_to_string(&file).unwrap(), PRIMARY);
        assert!(!c.status().present);
        c.arm();
        assert_eq!(c.reconcile(), Outcome::Written(file.clone()));
        let spliced = fs::read(&file).unwrap();
        assert!(septa_last(&spliced));
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600,
            "the file's mode is kept"
        );
        let ino = fs::metadata(&file).unwrap().ino();
        assert_eq!(c.reconcile(), Outcome::Unchanged(file.clone()));
        assert_eq!(fs::metadata(&file).unwrap().ino(), ino, "not rewritten");
        let st = c.status();
        assert!(st.present && st.error.is_none(), "{st:?}");
        assert_eq!(
            st.file.as_deref(),
            Some(file.display().to_string().as_str())
        );
        // No temporary file is left for a runtime to find.
        let names = list(&dir).unwrap();
        assert_eq!(names, ["10-flannel.conflist"]);

        // The primary CNI rewrites its file: the entry goes back in.
        fs::write(&file, PRIMARY).unwrap();
        assert_eq!(c.reconcile(), Outcome::Written(file.clone()));
        assert_eq!(fs::read(&file).unwrap(), spliced);

        assert_eq!(c.uninstall().unwrap(), vec![file.clone()]);
        assert_eq!(fs::read_to_string(&file).unwrap(), PRIMARY, "byte for byte");
        assert!(!c.status().present);
        assert_eq!(c.uninstall().unwrap(), Vec::<PathBuf>::new(), "idempotent");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_malformed_or_missing_primary_is_reported_and_left_alone() {
        let dir = tmp("bad");
        let d = dir.display().to_string();
        let mut c = conf(&["--cni-mode", "splice", "--cni-conf-dir", &d]);
        c.arm();
        assert_eq!(c.reconcile(), Outcome::Idle);
        let st = c.status();
        assert!(!st.present && st.error.is_some(), "no network file: {st:?}");
        let file = dir.join("10-calico.conflist");
        let broken = b"{\"cniVersion\": \"1.0.0\", \"plugins\": [";
        fs::write(&file, broken).unwrap();
        assert_eq!(c.reconcile(), Outcome::Idle);
        let st = c.status();
        assert!(!st.present, "{st:?}");
        assert_eq!(
            st.file.as_deref(),
            Some(file.display().to_string().as_str())
        );
        assert!(st.error.is_some());
        assert_eq!(fs::read(&file).unwrap(), broken, "never written to");
        assert_eq!(c.uninstall().unwrap(), Vec::<PathBuf>::new());
        assert_eq!(fs::read(&file).unwrap(), broken, "uninstall leaves it too");

        let gone = conf(&[
            "--cni-mode",
            "splice",
            "--cni-conf-dir",
            "/nonexistent/net.d",
        ]);
        let mut gone = gone;
        gone.arm();
        assert_eq!(gone.reconcile(), Outcome::Idle);
        assert!(gone.status().error.unwrap().contains("/nonexistent/net.d"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_the_runtime_does_not_use_is_not_called_present() {
        let dir = tmp("named");
        fs::write(dir.join("05-other.conflist"), PRIMARY).unwrap();
        fs::write(dir.join("10-flannel.conflist"), PRIMARY).unwrap();
        let d = dir.display().to_string();
        let mut c = conf(&[
            "--cni-mode",
            "splice",
            "--cni-conf-dir",
            &d,
            "--cni-network",
            "10-flannel.conflist",
        ]);
        c.arm();
        assert_eq!(c.reconcile(), Outcome::Idle);
        let st = c.status();
        assert!(!st.present, "{st:?}");
        assert!(
            st.error
                .unwrap()
                .contains("the runtime uses 05-other.conflist"),
            "named"
        );
        fs::remove_file(dir.join("05-other.conflist")).unwrap();
        assert_eq!(
            c.reconcile(),
            Outcome::Written(dir.join("10-flannel.conflist"))
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn links_huge_files_and_leftover_temporaries() {
        let dir = tmp("links");
        let elsewhere = dir.join("elsewhere.json.txt");
        fs::write(&elsewhere, PRIMARY).unwrap();
        let net = dir.join("net.d");
        fs::create_dir_all(&net).unwrap();
        std::os::unix::fs::symlink(&elsewhere, net.join("10-flannel.conflist")).unwrap();
        fs::write(net.join(".10-flannel.conflist.septa-tmp"), "half").unwrap();
        let n = net.display().to_string();
        let mut c = conf(&["--cni-mode", "splice", "--cni-conf-dir", &n]);
        c.arm();
        assert!(
            !net.join(".10-flannel.conflist.septa-tmp").exists(),
            "a crashed agent's temporary file is removed"
        );
        assert_eq!(c.reconcile(), Outcome::Idle);
        assert!(c.status().error.unwrap().contains("symbolic link"));
        assert_eq!(
            fs::read_to_string(&elsewhere).unwrap(),
            PRIMARY,
            "not written through"
        );
        assert!(fs::symlink_metadata(net.join("10-flannel.conflist"))
            .unwrap()
            .file_type()
            .is_symlink());
        fs::remove_file(net.join("10-flannel.conflist")).unwrap();
        let mut huge = PRIMARY.trim_end().to_owned();
        huge.push_str(&" ".repeat(2 << 20));
        fs::write(net.join("10-flannel.conflist"), &huge).unwrap();
        assert_eq!(c.reconcile(), Outcome::Idle);
        assert!(c.status().error.unwrap().contains("larger than"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn own_file_is_installed_kept_and_removed_only_while_unchanged() {
        let dir = tmp("own");
        let src = dir.join("src.conflist");
        let own = "{\"cniVersion\": \"1.0.0\", \"name\": \"pods\", \"plugins\": [{\"type\": \"bridge\", \"bridge\": \"cni0\"}, {\"type\": \"septa-cni\"}]}\n";
        fs::write(&src, own).unwrap();
        let net = dir.join("net.d");
        fs::create_dir_all(&net).unwrap();
        let (s, n) = (src.display().to_string(), net.display().to_string());
        let args = [
            "--cni-mode",
            "own-file",
            "--cni-own-file",
            &s,
            "--cni-conf-dir",
            &n,
        ];
        let mut c = conf(&args);
        c.arm();
        let installed = net.join("05-septa.conflist");
        assert_eq!(c.reconcile(), Outcome::Written(installed.clone()));
        assert_eq!(fs::read_to_string(&installed).unwrap(), own);
        assert_eq!(c.reconcile(), Outcome::Unchanged(installed.clone()));
        fs::write(&installed, "{}").unwrap();
        assert_eq!(c.reconcile(), Outcome::Written(installed.clone()));
        assert_eq!(c.uninstall().unwrap(), vec![installed.clone()]);
        assert!(!installed.exists());

        let mut c = conf(&args);
        c.arm();
        c.reconcile();
        fs::write(&installed, "someone else's").unwrap();
        assert_eq!(c.uninstall().unwrap(), Vec::<PathBuf>::new());
        assert_eq!(fs::read_to_string(&installed).unwrap(), "someone else's");

        // An own file without septa-cni is refused before anything is written.
        fs::write(&src, "{\"cniVersion\": \"1.0.0\", \"name\": \"pods\", \"plugins\": [{\"type\": \"bridge\"}]}").unwrap();
        let cfg = Config::load(["septa-agent"].iter().chain(&args).copied()).unwrap();
        let e = CniConf::new(&cfg).err().expect("refused");
        assert!(e.starts_with(&format!("--cni-own-file {s}")), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
