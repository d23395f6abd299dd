//! The agent's own directories (state, socket, pins): checked before use, locked against a
//! second agent, and written only through a directory handle.
//!
//! Fail mode: the agent refuses to start, naming the directory, when one of them is owned by
//! another user than the agent's or is writable by group or others (anyone who can write there
//! could plant links, swap the socket for a fake agent, or replace the registry), and when
//! another agent holds its lock. Files are opened relative to the directory handle taken at
//! start-up, never through a path that could be re-pointed later; new files are created with
//! `O_EXCL|O_NOFOLLOW` (a link planted at the temporary name is removed, never followed) and
//! replace the old one by rename, after an fsync of the file, and the directory is fsynced
//! after the rename: a crash or a full file system leaves either the old content or the new
//! one, never a mix, and a change reported done survives a power loss.

use std::{
    io::{self, Read, Write},
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::DirBuilderExt,
    },
    path::{Path, PathBuf},
};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};

use dataplane::Error;

/// A directory the agent owns, opened once.
#[derive(Debug)]
pub struct Dir {
    path: PathBuf,
    /// What the directory is for, with its flag, for messages ("state directory (--state-dir)").
    what: &'static str,
    fd: OwnedFd,
}

/// An exclusive lock, held until dropped (the kernel releases it when the process exits).
#[derive(Debug)]
pub struct Lock {
    _fd: OwnedFd,
}

/// Mode bits that let someone other than the owner write to a directory.
const WRITABLE_BY_OTHERS: u32 = 0o022;

impl Dir {
    /// Open `path`, creating it (and its missing parents) with mode 0700 when it does not exist,
    /// and refuse it unless it is a directory owned by the agent's effective user and not
    /// writable by group or others.
    pub fn open(path: &Path, what: &'static str) -> Result<Self, Error> {
        let fail = |m: String| Error::Config(format!("{what} {}: {m}", path.display()));
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
        {
            return Err(fail(format!("cannot create it: {e}")));
        }
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fail(format!("cannot open it: {e}")))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| fail(format!("cannot stat it: {e}")))?;
        let euid = rustix::process::geteuid().as_raw();
        if st.st_uid != euid {
            return Err(fail(format!(
                "owned by uid {}, not by the agent's uid {euid}; anyone who owns it can replace \
                 what the agent keeps there: chown {euid} it or choose another directory",
                st.st_uid
            )));
        }
        let mode = st.st_mode & 0o7777;
        if mode & WRITABLE_BY_OTHERS != 0 {
            return Err(fail(format!(
                "mode {mode:04o} lets group or others write to it; anyone who can write there can \
                 replace what the agent keeps there: chmod go-w it or choose another directory"
            )));
        }
        Ok(Dir {
            path: path.to_owned(),
            what,
            fd,
        })
    }

    /// The directory's path (for messages and for calls that need a path, like `bind`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in this directory (for messages).
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Take an exclusive lock on the file `name` in this directory (created 0600), without
    /// waiting, and write this process's id into it. Another agent holding it is an error that
    /// names the lock file and the holder's process id.
    pub fn lock_file(&self, name: &str) -> Result<Lock, Error> {
        let path = self.join(name);
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| Error::Config(format!("lock file {}: {e}", path.display())))?;
        if let Err(e) = rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            let mut holder = String::new();
            let _ = std::fs::File::from(fd).read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            return Err(Error::Config(format!(
                "{} is locked by another septa-agent{holder} using this {}: {e}; stop it first \
                 (two agents on one node undo each other's endpoints)",
                path.display(),
                self.what
            )));
        }
        let mut f = std::fs::File::from(fd);
        let pid = format!("{}\n", rustix::process::getpid().as_raw_nonzero());
        let write = f.set_len(0).and_then(|_| f.write_all(pid.as_bytes()));
        if let Err(e) = write {
            return Err(Error::Config(format!("lock file {}: {e}", path.display())));
        }
        Ok(Lock { _fd: f.into() })
    }

    /// Take an exclusive lock on the directory itself, without waiting: for directories that
    /// cannot hold a lock file (bpffs holds only pinned objects and directories).
    pub fn lock_self(&self) -> Result<Lock, Error> {
        let fd = rustix::fs::openat(
            &self.fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::Config(format!("{} {}: {e}", self.what, self.path.display())))?;
        rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).map_err(|e| {
            Error::Config(format!(
                "{} {} is locked by another septa-agent (the lock is flock(2) on the directory \
                 itself): {e}; stop it first (two agents on one node undo each other's endpoints)",
                self.what,
                self.path.display()
            ))
        })?;
        Ok(Lock { _fd: fd })
    }

    /// Read the regular file `name` (not a link, not a FIFO or device), at most `max` bytes.
    /// `Ok(None)` when it does not exist. Errors name the file.
    pub fn read(&self, name: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
        let path = self.join(name);
        let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let fd = match rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(rustix::io::Errno::LOOP) => {
                return Err(named(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "is a symbolic link, which is never followed here",
                )))
            }
            Err(e) => return Err(named(e.into())),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| named(e.into()))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(named(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a regular file",
            )));
        }
        let mut out = Vec::new();
        std::fs::File::from(fd)
            .take(max + 1)
            .read_to_end(&mut out)
            .map_err(named)?;
        if out.len() as u64 > max {
            return Err(named(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than the {max}-byte limit"),
            )));
        }
        Ok(Some(out))
    }

    /// Replace the file `name` with `bytes`, created with `mode`: written to `name.tmp`
    /// (`O_EXCL|O_NOFOLLOW`; whatever was left at that name, a link included, is removed first),
    /// fsynced, renamed over `name`, then the directory fsynced. On error `name` still holds its
    /// old content; the error names the file.
    pub fn replace(&self, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
        let tmp = format!("{name}.tmp");
        let named = |n: &str, e: io::Error| {
            io::Error::new(e.kind(), format!("{}: {e}", self.join(n).display()))
        };
        let create = || {
            rustix::fs::openat(
                &self.fd,
                tmp.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(mode),
            )
        };
        let fd = match create() {
            Err(rustix::io::Errno::EXIST) => {
                // Left by a crash, or planted: unlinkat removes a link itself, not its target.
                rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty())
                    .map_err(|e| named(&tmp, e.into()))?;
                create()
            }
            r => r,
        }
        .map_err(|e| named(&tmp, e.into()))?;
        let mut f = std::fs::File::from(fd);
        // The umask may have narrowed the mode; the mode asked for is the one meant.
        let written = rustix::fs::fchmod(f.as_fd(), Mode::from_raw_mode(mode))
            .map_err(io::Error::from)
            .and_then(|_| f.write_all(bytes))
            .and_then(|_| f.sync_all());
        drop(f);
        if let Err(e) = written {
            let _ = rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty());
            return Err(named(&tmp, e));
        }
        if let Err(e) = rustix::fs::renameat(&self.fd, tmp.as_str(), &self.fd, name) {
            let _ = rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty());
            return Err(named(name, e.into()));
        }
        rustix::fs::fsync(&self.fd).map_err(|e| named(".", e.into()))
    }

    /// Rename `from` to `to` in this directory (a link is renamed, not followed).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        rustix::fs::renameat(&self.fd, from, &self.fd, to).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("{}: {e}", self.join(from).display()),
            )
        })
    }

    /// Remove the file `name` (a link is removed, not its target); absent is fine.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(io::Error::new(
                io::Error::from(e).kind(),
                format!("{}: {e}", self.join(name).display()),
            )),
        }
    }

    /// Device and inode of `name` (not following a link), to tell one file from its replacement.
    pub fn identity(&self, name: &str) -> Option<(u64, u64)> {
        rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .map(|st| (st.st_dev, st.st_ino))
    }
}

/// The directories of one running agent, checked and locked: the state directory (the registry,
/// `agent.lock`), the pin directory (locked itself: bpffs holds no plain files), and the
/// socket's directory (`.<socket>.lock`, so two agents starting at once on one socket cannot
/// both bind it).
#[derive(Debug)]
pub struct AgentDirs {
    pub state: std::sync::Arc<Dir>,
    pub socket: Dir,
    /// The socket's file name in [`AgentDirs::socket`].
    pub socket_name: String,
    _locks: [Lock; 3],
}

/// The lock file in the state directory.
pub const LOCK_FILE: &str = "agent.lock";

impl AgentDirs {
    /// Check and lock the agent's directories, and make sure no agent serves on `socket`. The
    /// first thing an agent does: a second agent on the same node stops here, before it has
    /// touched anything the first one uses.
    pub fn take(state: &Path, pins: &Path, socket: &Path) -> Result<Self, Error> {
        let state = Dir::open(state, "state directory (--state-dir)")?;
        let state_lock = state.lock_file(LOCK_FILE)?;
        let pin_lock = Dir::open(pins, "pin directory (--pin-dir)")?.lock_self()?;
        let (Some(parent), Some(name)) = (socket.parent(), socket.file_name()) else {
            return Err(Error::Config(format!(
                "socket {}: not a file path",
                socket.display()
            )));
        };
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let dir = Dir::open(parent, "socket directory (--socket)")?;
        let name = name.to_string_lossy().into_owned();
        let socket_lock = dir.lock_file(&format!(".{name}.lock"))?;
        // An agent that takes no such lock (an older build) still answers on the socket.
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(Error::Config(format!(
                "socket {}: another agent is serving on it; stop it first (or give this one \
                 another --socket)",
                socket.display()
            )));
        }
        Ok(AgentDirs {
            state: std::sync::Arc::new(state),
            socket: dir,
            socket_name: name,
            _locks: [state_lock, pin_lock, socket_lock],
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("septa-dirs-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_directory_writable_by_others_or_owned_by_another_user_is_refused() {
        let d = scratch("modes");
        let dir = Dir::open(&d, "state directory (--state-dir)").expect("created");
        let created = std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777;
        assert_eq!(created, 0o700, "created for the agent alone");
        drop(dir);
        for (mode, ok) in [
            (0o755, true),
            (0o775, false),
            (0o757, false),
            (0o1777, false),
        ] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = Dir::open(&d, "state directory (--state-dir)");
            assert_eq!(r.is_ok(), ok, "mode {mode:o}: {r:?}");
            if let Err(e) = r {
                let e = e.to_string();
                assert!(
                    e.contains(&d.display().to_string()) && e.contains("--state-dir"),
                    "{e}"
                );
            }
        }
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&d, Some(65534), None).unwrap();
        let e = Dir::open(&d, "state directory (--state-dir)")
            .unwrap_err()
            .to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn replace_never_follows_a_link_planted_at_the_temporary_name() {
        let d = scratch("link");
        let dir = Dir::open(&d, "state directory").unwrap();
        let target = scratch("link-target");
        std::fs::write(&target, "precious").unwrap();
        std::os::unix::fs::symlink(&target, d.join("endpoints.json.tmp")).unwrap();
        dir.replace("endpoints.json", b"{}", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        assert_eq!(std::fs::read(d.join("endpoints.json")).unwrap(), b"{}");
        let m = std::fs::symlink_metadata(d.join("endpoints.json")).unwrap();
        assert!(m.is_file());
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert!(!d.join("endpoints.json.tmp").exists());
        // A crash's leftover at the temporary name is no obstacle either.
        std::fs::write(d.join("endpoints.json.tmp"), "half").unwrap();
        dir.replace("endpoints.json", b"{\"a\":1}", 0o600).unwrap();
        assert_eq!(
            std::fs::read(d.join("endpoints.json")).unwrap(),
            b"{\"a\":1}"
        );
        // Reads do not follow links either.
        std::os::unix::fs::symlink(&target, d.join("linked")).unwrap();
        let e = dir.read("linked", 1024).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(dir.read("absent", 1024).unwrap(), None);
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_file(&target);
    }

    #[test]
    fn reads_are_bounded_and_only_of_regular_files() {
        let d = scratch("read");
        let dir = Dir::open(&d, "state directory").unwrap();
        std::fs::write(d.join("big"), vec![b'x'; 2000]).unwrap();
        let e = dir.read("big", 1000).unwrap_err().to_string();
        assert!(e.contains("1000-byte limit"), "{e}");
        // A FIFO would block a plain open or read for good.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            d.join("fifo").as_path(),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = dir.read("fifo", 1000).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_second_lock_fails_at_once_naming_the_lock_file_and_its_holder() {
        let d = scratch("lock");
        let dir = Dir::open(&d, "state directory (--state-dir)").unwrap();
        let held = dir.lock_file("agent.lock").unwrap();
        // flock(2) locks belong to the open file, so a second open in this process conflicts
        // just as another process's would.
        let e = dir.lock_file("agent.lock").unwrap_err().to_string();
        assert!(
            e.contains(&d.join("agent.lock").display().to_string()),
            "{e}"
        );
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        let self_held = dir.lock_self().unwrap();
        assert!(dir.lock_self().is_err());
        drop((held, self_held));
        dir.lock_file("agent.lock")
            .expect("free again once dropped");
        let _ = std::fs::remove_dir_all(&d);
    }
}
