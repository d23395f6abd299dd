//! The container images `make images` builds (scripts/images.sh, images/<name>/Containerfile)
//! hold what the chart runs, and it can run there: each OCI archive is unpacked the way a
//! container runtime would (index → manifest → config and layers), its entrypoint checked,
//! every binary proven static (a scratch image has no loader or libc) and run for `--version`
//! from the unpacked root filesystem.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Each image (the folder name under images/) and the binaries its /usr/bin must hold, the
/// entrypoint `septa-<image>` among them.
const IMAGES: &[(&str, &[&str])] = &[("agent", &["septa", "septa-agent", "septa-cni"])];

const VERSION: &str = env!("CARGO_PKG_VERSION");
const LICENSE: &str = env!("CARGO_PKG_LICENSE");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where scripts/images.sh writes the archives: under the target directory cargo uses.
fn archive_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("images")
}

/// A directory removed when the test ends, pass or fail.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("septa-image-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "{:?}: {e} (scripts/setup.sh installs what the tests need)",
            cmd.get_program()
        )
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// GNU tar unpacks plain and gzip-compressed archives alike (OCI layers may be either).
fn untar(archive: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(into)
        .arg("--no-same-owner"));
}

/// The blob a descriptor points to, after checking its digest and size: an archive whose
/// blobs do not match its manifests would be refused by any registry.
fn blob(layout: &Path, descriptor: &Value) -> PathBuf {
    let digest = descriptor["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("descriptor without digest: {descriptor}"));
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
    let path = layout.join("blobs/sha256").join(hex);
    let len = std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .len();
    assert_eq!(
        Some(len),
        descriptor["size"].as_u64(),
        "size of {}",
        path.display()
    );
    let out = run(Command::new("sha256sum").arg(&path));
    let actual = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        actual.split_whitespace().next(),
        Some(hex),
        "{} does not match its digest",
        path.display()
    );
    path
}

fn json(path: &Path) -> Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether an ELF file asks for a program interpreter (a PT_INTERP program header): that is
/// what makes a binary dynamically linked, static-pie binaries included (they do carry a
/// PT_DYNAMIC, for relocating themselves, but no interpreter).
fn elf_interpreter(path: &Path) -> bool {
    const PT_INTERP: u32 = 3;
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        b.len() >= 64 && b[..4] == *b"\x7fELF",
        "{} is not an ELF file",
        path.display()
    );
    assert_eq!(b[4], 2, "{} is not a 64-bit ELF", path.display());
    assert_eq!(b[5], 1, "{} is not little-endian", path.display());
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    assert!(
        phoff + phentsize * phnum <= b.len() && phentsize >= 4,
        "{}: program headers out of bounds",
        path.display()
    );
    (0..phnum).any(|i| u32_at(phoff + i * phentsize) == PT_INTERP)
}

/// Every path under `root` that is not a directory, relative to it.
fn files(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.is_symlink() {
                walk(root, &path, out);
            } else {
                out.insert(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn every_image_folder_is_checked() {
    let dir = workspace().join("images");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut checked: Vec<String> = IMAGES.iter().map(|(n, _)| n.to_string()).collect();
    checked.sort();
    assert_eq!(
        on_disk, checked,
        "images/ and the images this test checks differ"
    );
}

/// The control for the static check: this test binary (built for the host's glibc) asks for a
/// loader, and the check must say so.
#[test]
fn the_static_check_sees_a_dynamic_binary() {
    let me = std::env::current_exe().expect("current_exe");
    assert!(
        elf_interpreter(&me),
        "{} has no PT_INTERP, yet it is dynamically linked",
        me.display()
    );
}

#[test]
fn images_hold_static_binaries_that_run() {
    for (name, binaries) in IMAGES {
        let image = format!("septa-{name}");
        let archive = archive_dir().join(format!("{image}.oci.tar"));
        assert!(
            archive.is_file(),
            "{} is missing: run `make images` (scripts/images.sh)",
            archive.display()
        );
        let scratch = Scratch::new(name);
        let layout = scratch.0.join("layout");
        untar(&archive, &layout);

        let index = json(&layout.join("index.json"));
        assert_eq!(index["schemaVersion"], 2, "{image}: index.json");
        let manifests = index["manifests"].as_array().expect("index.manifests");
        assert_eq!(manifests.len(), 1, "{image}: one manifest in the archive");
        let reference = manifests[0]["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap_or_default();
        assert!(
            reference.contains(&format!("/{image}:")),
            "{image}: the archive's reference {reference:?} names another image"
        );
        let manifest = json(&blob(&layout, &manifests[0]));
        assert_eq!(
            manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json",
            "{image}: an OCI manifest"
        );

        let config = json(&blob(&layout, &manifest["config"]));
        assert_eq!(config["os"], "linux", "{image}");
        assert_eq!(config["architecture"], "amd64", "{image}");
        let entrypoint = format!("/usr/bin/{image}");
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!([entrypoint]),
            "{image}: entrypoint"
        );
        let labels = &config["config"]["Labels"];
        assert_eq!(labels["org.opencontainers.image.title"], image.as_str());
        assert_eq!(labels["org.opencontainers.image.version"], VERSION);
        assert_eq!(labels["org.opencontainers.image.licenses"], LICENSE);
        let profile = labels["dev.septa.build-profile"]
            .as_str()
            .unwrap_or_default();
        assert!(
            profile == "image" || profile == "image-test",
            "{image}: built with a profile of scripts/images.sh, not {profile:?}"
        );

        let rootfs = scratch.0.join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        let layers = manifest["layers"].as_array().expect("manifest.layers");
        assert!(!layers.is_empty(), "{image}: no layers");
        for layer in layers {
            untar(&blob(&layout, layer), &rootfs);
        }

        // Exactly the binaries: no shell, no libc, nothing else a scratch image should not hold.
        let want: BTreeSet<String> = binaries.iter().map(|b| format!("usr/bin/{b}")).collect();
        assert_eq!(files(&rootfs), want, "{image}: files in the image");

        for bin in *binaries {
            let path = rootfs.join("usr/bin").join(bin);
            assert!(
                !elf_interpreter(&path),
                "{image}: /usr/bin/{bin} is dynamically linked (it has a program interpreter)"
            );
            let out = run(Command::new(&path).arg("--version").env_clear());
            let stdout = String::from_utf8_lossy(&out.stdout);
            let line = stdout.lines().next().unwrap_or_default();
            assert!(
                line.starts_with(bin) && line.contains(VERSION),
                "{image}: `{bin} --version` printed {stdout:?}, not `{bin} {VERSION}`"
            );
        }
    }
}
