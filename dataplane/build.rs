//! Builds the eBPF object (dataplane-ebpf) with the pinned nightly and bpf-linker, so that
//! `cargo build` of the agent is all a developer runs. Set AYA_BUILD_SKIP=1 to skip (the
//! embedded object is then missing and loading fails with a clear error).
//!
//! SEPTA_NO_EBPF=1 makes this build script fail: `make test` builds the CLI with it set, which
//! proves the CLI builds on a machine without the eBPF toolchain.
fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=SEPTA_NO_EBPF");
    if std::env::var_os("SEPTA_NO_EBPF").is_some() {
        anyhow::bail!(
            "SEPTA_NO_EBPF is set, yet the eBPF object is being built: something that must build \
             without the eBPF toolchain depends on the dataplane crate"
        );
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dataplane-ebpf");
    let toolchain_file = root.join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", toolchain_file.display());
    let text = std::fs::read_to_string(&toolchain_file)?;
    let channel = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel"))
        .and_then(|v| v.split('"').nth(1))
        .ok_or_else(|| anyhow::anyhow!("no channel in {}", toolchain_file.display()))?
        .to_owned();
    let root_dir = root
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "dataplane-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&channel),
    )
}
