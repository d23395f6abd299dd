#!/usr/bin/env bash
# Runs every check and test, then prints one closing line with the totals over all test
# binaries (cargo's own last line is the doc-test summary of the last crate).
set -euo pipefail
# A fresh clone gains nothing from incremental state (another gigabyte on disk).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cd "$(dirname "$0")/.."
# A fresh build needs about 2.5 GB under target/, and the static binaries of the container
# images 1.2 GB more; say so up front rather than as a linker error twenty binaries later.
free_kb=$(df -Pk . | awk 'NR == 2 { print $4 }')
echo "disk: $((free_kb / 1024)) MiB free under $(pwd)"
if [ "$free_kb" -lt $((4 * 1024 * 1024)) ]; then
    echo "warning: less than 4 GiB free; the build may run out of space" >&2
fi
cargo fmt --all -- --check
# The CLI and the CNI plugin build on stable Rust without the eBPF toolchain: neither links aya
# nor the dataplane crate (whose build script builds the eBPF object and refuses to under
# SEPTA_NO_EBPF).
for pkg in cli cni; do
    if cargo tree -q -p "$pkg" -e normal,build --prefix none | grep -qE '^(aya|aya-build|dataplane|dataplane-ebpf) '; then
        echo "$pkg depends on aya or the eBPF build; it must not" >&2
        exit 1
    fi
done
SEPTA_NO_EBPF=1 cargo build -q -p cli -p cni
cargo clippy --workspace --all-targets -q -- -D warnings
# tests/tests/images.rs unpacks the images and runs their binaries: build them first.
echo "==> building container images (static binaries, unoptimised: make images builds the optimised ones)"
SEPTA_IMAGE_PROFILE=image-test bash scripts/images.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
