//! `--prepare-node`: what the chart's init container does before the agent starts, with the
//! agent's own binary (the image has no shell): make sure bpffs is mounted where the pins
//! go, and install the septa-cni binary shipped beside this one into the CNI binary
//! directory. Both steps are idempotent; a binary already identical is not rewritten.

use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
};

use crate::config::Config;

/// bpffs's `f_type` (linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Prepare the node; returns one line per thing done or found in place.
pub fn prepare_node(cfg: &Config) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    done.push(ensure_bpffs(&cfg.pin_dir)?);
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let plugin = exe.with_file_name("septa-cni");
    done.push(install_binary(&plugin, &cfg.cni_bin_dir)?);
    Ok(done)
}

/// The directory bpffs must be mounted on for `pin_dir`: the pin directory itself when it
/// exists on bpffs already, else its parent (`/sys/fs/bpf` for the default pins).
fn ensure_bpffs(pin_dir: &Path) -> Result<String, String> {
    let on_bpffs = |p: &Path| {
        rustix::fs::statfs(p).is_ok_and(|s| {
            // f_type's width and sign differ between targets; compare the low 32 bits.
            #[allow(clippy::unnecessary_cast)]
            let f_type = s.f_type as i64;
            (f_type & 0xffff_ffff) == BPF_FS_MAGIC
        })
    };
    if on_bpffs(pin_dir) {
        return Ok(format!("bpffs: {} is on bpffs", pin_dir.display()));
    }
    let mount_point = pin_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| {
            format!(
                "--pin-dir {}: no parent to mount bpffs on",
                pin_dir.display()
            )
        })?;
    if on_bpffs(mount_point) {
        return Ok(format!("bpffs: {} is on bpffs", mount_point.display()));
    }
    fs::create_dir_all(mount_point).map_err(|e| format!("{}: {e}", mount_point.display()))?;
    rustix::mount::mount("bpf", mount_point, "bpf", rustix::mount::MountFlags::empty(), None)
        .map_err(|e| {
            format!(
                "mounting bpffs on {}: {e} (the init container needs privileges and Bidirectional mount propagation for the host to see it)",
                mount_point.display()
            )
        })?;
    Ok(format!("bpffs: mounted on {}", mount_point.display()))
}

/// Copy `src` into `dir` under its own name, mode 0755, atomically (temporary file, rename):
/// a runtime starting the plugin meanwhile runs the old or the new binary, never half of one.
fn install_binary(src: &Path, dir: &Path) -> Result<String, String> {
    let name = src
        .file_name()
        .ok_or_else(|| format!("{}: no file name", src.display()))?;
    let bytes = fs::read(src).map_err(|e| format!("{}: {e}", src.display()))?;
    let dst = dir.join(name);
    if fs::read(&dst).is_ok_and(|have| have == bytes) {
        return Ok(format!("{}: up to date", dst.display()));
    }
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".{}.septa-tmp", name.to_string_lossy()));
    let write = || -> std::io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.set_permissions(fs::Permissions::from_mode(0o755))?;
        f.sync_all()?;
        fs::rename(&tmp, &dst)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("installing {}: {e}", dst.display())
    })?;
    Ok(format!("{}: installed", dst.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_once_and_replaces_a_different_binary() {
        let tmp = std::env::temp_dir().join(format!("septa-prepare-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(tmp.join("src")).unwrap();
        let src = tmp.join("src/septa-cni");
        fs::write(&src, b"new plugin").unwrap();
        let bin = tmp.join("bin");
        assert!(install_binary(&src, &bin).unwrap().ends_with("installed"));
        let dst = bin.join("septa-cni");
        assert_eq!(fs::read(&dst).unwrap(), b"new plugin");
        assert_eq!(
            fs::metadata(&dst).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert!(install_binary(&src, &bin).unwrap().ends_with("up to date"));
        fs::write(&dst, b"old plugin").unwrap();
        assert!(install_binary(&src, &bin).unwrap().ends_with("installed"));
        assert_eq!(fs::read(&dst).unwrap(), b"new plugin");
        // No temporary file is left for a runtime to find.
        let names: Vec<_> = fs::read_dir(&bin)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("septa-cni")]);
        assert!(install_binary(&tmp.join("src/missing"), &bin).is_err());
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn bpffs_mounted_where_it_is_missing() {
        // Tests run as root (scripts/setup.sh): a plain directory gets bpffs, once.
        let base = std::env::temp_dir().join(format!("septa-bpffs-{}", std::process::id()));
        fs::create_dir_all(&base).unwrap();
        let pins = base.join("septa");
        let first = ensure_bpffs(&pins);
        let again = ensure_bpffs(&pins);
        let unmounted = rustix::mount::unmount(&base, rustix::mount::UnmountFlags::empty());
        let _ = fs::remove_dir_all(&base);
        assert_eq!(
            first.unwrap(),
            format!("bpffs: mounted on {}", base.display())
        );
        assert_eq!(
            again.unwrap(),
            format!("bpffs: {} is on bpffs", base.display())
        );
        unmounted.expect("the test's mount is removed");
    }

    #[test]
    fn bpffs_found_where_the_pins_go() {
        // Tests run as root on a machine with bpffs on /sys/fs/bpf (scripts/setup.sh).
        let found = ensure_bpffs(Path::new("/sys/fs/bpf/septa-prepare-test")).unwrap();
        assert_eq!(found, "bpffs: /sys/fs/bpf is on bpffs");
    }
}
